"""The acts: what a cached call hands out in place of a module's kept result (DeepCache's Section 3
reuses it as it was; this library also forecasts it, or zeroes it for the paper's Table 5 ablation).

Every act has ``keep`` and ``give`` and a ``time`` variable (see ``Replay``); ``act_for`` builds one from
a ``cachediff.config.DeepCacheConfig``'s fields.

Example:
    >>> import torch
    >>> act = act_for("forecast", order=2, time="step")
    >>> kept = act.keep(act.keep(None, torch.tensor([1.0]), 0), torch.tensor([2.0]), 1)
    >>> act.give(kept, None, 3), act_for().give(torch.tensor([2.0]), None, 3)
    (tensor([4.]), tensor([2.]))
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.utils import _pytree as pytree

from .trees import placeholder


class Replay:
    """DeepCache: a cached call hands out the result kept from the last full call.

    An act has two methods, both called inside the denoiser's forward (so inside a compiled graph:
    no host synchronisation, no Python state that changes every call), and a ``time`` attribute,
    the variable its ``t`` is measured in ("step": the step index; "timestep": the scheduler's):

    - ``keep(kept, value, t, probe)``: on a full call at time ``t``, what to keep, given what was
      kept before (``None`` at first) and the module's fresh result;
    - ``give(kept, layout, t, probe)``: on a cached call at time ``t``, the result to hand out (the
      core copies it before the model sees it), given what was kept and the layout of the module's
      output.

    ``probe`` is the group's shallow feature of the call where the session computes it (an act with
    ``probes = True`` asks it to; else it may be ``None``).
    """

    name, time, probes = "cache", "step", False

    def keep(self, kept: Any, value: Any, t: float, probe: torch.Tensor | None = None) -> Any:
        return value

    def give(self, kept: Any, layout: tuple, t: float, probe: torch.Tensor | None = None) -> Any:
        return kept


class Forecast:
    """A cached call hands out the polynomial through the results of the last ``order`` full calls,
    evaluated at its own time: with full calls at times t_1 .. t_k (k <= order) and results f_i,

        f(t) = sum_i w_i f_i,    w_i = prod_{j != i} (t - t_j) / (t_i - t_j)

    the Lagrange form of Newton's forward-difference extrapolation (k = 2: f_2 + (f_2 - f_1) (t - t_2)
    / (t_2 - t_1)). Exact when the result is a polynomial of degree < k in ``time``. ``order`` 1 is
    ``Replay``; early in a run, before ``order`` full calls, the polynomial is of the calls so far.
    The weights are Python floats of host times, so the forecast costs ``order`` multiply-adds of the
    feature and no synchronisation; ``order`` results are kept.

    With ``time="shallow"`` the weights are not a polynomial's but fitted per sample to the group's
    probe (the shallow feature, computed afresh on every call): those whose combination of the probes
    kept at the full calls is nearest the cached call's own probe (``fitted_weights``); the timestep
    then only orders the kept points. With ``time="anchored"`` they also reproduce the call's timestep
    (the line through the last two full calls, plus what a third and fourth point leave free, fitted).

    With ``fallback``, the shallow feature checks the forecast on every cached call: the same weights
    extrapolate the group's probe (the shallow feature, computed afresh on every call) from its values
    at the full calls, and where that extrapolation misses the probe's actual value by more than the
    probe's last full value does (|p - sum_i w_i p_i| > |p - p_k|), the call replays f_k instead. The
    choice is a ``torch.where`` on the device: no synchronisation; ``order`` probes are kept too.

    Example:
        >>> act = Forecast(order=2, time="step")
        >>> kept = act.keep(act.keep(None, torch.tensor([1.0]), 0), torch.tensor([3.0]), 5)
        >>> act.give(kept, None, 10), act.give(kept, None, 7)
        (tensor([5.]), tensor([3.8000]))
        >>> act = Forecast(order=2, time="step", fallback=True)  # probes 0 at t = 0, 1 at t = 5
        >>> kept = act.keep(None, torch.tensor([1.0]), 0, torch.zeros(1))
        >>> kept = act.keep(kept, torch.tensor([3.0]), 5, torch.ones(1))
        >>> act.give(kept, None, 10, torch.tensor([2.0])), act.give(kept, None, 10, torch.tensor([1.0]))
        (tensor([5.]), tensor([3.]))
    """

    name = "forecast"

    def __init__(self, order: int = 2, time: str = "timestep", fallback: bool = False):
        self.order, self.fallback, self.fitted = order, fallback, time in ("shallow", "anchored")
        self.anchored = time == "anchored"
        self.time = "timestep" if self.fitted else time  # a fit: the timestep orders (and anchors) the points
        self.probes = fallback or self.fitted

    def keep(self, kept: Any, value: Any, t: float, probe: torch.Tensor | None = None) -> Any:
        points = [p for p in kept or () if p.t != t]  # a repeated time (PLMS) replaces its point
        return tuple(points + [_Point(t, value, probe if self.probes else None)])[-self.order :]

    def give(self, kept: Any, layout: tuple, t: float, probe: torch.Tensor | None = None) -> Any:
        probes = tuple(p.probe for p in kept)
        unprobed = len(kept) < 2 or probe is None or any(p is None for p in probes)
        if self.fitted and unprobed:
            return kept[-1].value  # nothing to fit on (one full call so far, no tensor input): replay
        if self.fitted:
            weights = fitted_weights(probes, probe, [p.t for p in kept] if self.anchored else None, t)
        else:
            weights = lagrange_weights([p.t for p in kept], t)
        out = pytree.tree_map(lambda *leaves: _weighted_sum(leaves, weights), *[p.value for p in kept])
        if self.fitted or not self.fallback or unprobed:
            return out
        missed = (probe - _weighted_sum(probes, weights)).square().sum()
        replay_missed = (probe - probes[-1]).square().sum()
        trusted = missed <= replay_missed  # a 0-d bool tensor: stays on the device
        return pytree.tree_map(
            lambda f, last: torch.where(trusted, f, last) if isinstance(f, torch.Tensor) else f,
            out,
            kept[-1].value,
        )


def lagrange_weights(times: list[float], t: float) -> list[float]:
    """w_i = prod_{j != i} (t - t_j) / (t_i - t_j): the weights of the polynomial through values at
    ``times``, evaluated at ``t`` (plain loops: dynamo traces them into a compiled graph).

    Example:
        >>> lagrange_weights([0.0, 1.0], 3.0)  # the line through f(0), f(1) at 3: 3 f(1) - 2 f(0)
        [-2.0, 3.0]
    """
    weights = []
    for i, ti in enumerate(times):
        w = 1.0
        for j, tj in enumerate(times):
            if j != i:
                w *= (t - tj) / (ti - tj)
        weights.append(w)
    return weights


class _Point(NamedTuple):
    """A full call's result kept by ``Forecast``: its time, its value and (with ``fallback``) the
    group's probe of that call."""

    t: float
    value: Any
    probe: torch.Tensor | None


def fitted_weights(
    probes: tuple[torch.Tensor, ...], probe: torch.Tensor, times: list[float] | None = None, t: float = 0.0
) -> list:
    """Per sample (the first dimension), the affine weights w_i (summing to 1) of the kept ``probes``
    whose combination sum_i w_i p_i is nearest the fresh ``probe`` in least squares: the shallow
    feature, computed afresh on the cached call, tells how far along the kept points' trajectory the
    call has moved. With ``times`` (the kept points' times) and the call's ``t``, the weights are
    anchored to the timestep: they also reproduce t (sum_i w_i t_i = t), so two points give the line
    through them and only the freedom left by a third or fourth point is fitted.

    The weights are w = base + B s: ``base`` meets the constraints (replay, or the line through the
    last two points), the columns of B span what keeps them (e_j - base_j, with base_j the constraint
    weights that give point j's own time), and s is solved per sample on the device (``solve_ex``: no
    host synchronisation) in at least float32, with a ridge of a few rounding errors for coincident
    points. Each weight is a tensor of shape (batch,), or a float where nothing is left to fit.

    Example:
        >>> p0, p1 = torch.zeros(2, 3), torch.tensor([[1.0, 1, 1], [2, 2, 2]])
        >>> w0, w1 = fitted_weights((p0, p1), torch.full((2, 3), 1.5))  # 1.5 = -0.5 p0 + 1.5 p1, ...
        >>> w0.round(decimals=4).tolist(), w1.round(decimals=4).tolist()
        ([-0.5, 0.25], [1.5, 0.75])
        >>> fitted_weights((p0, p1), torch.full((2, 3), 1.5), times=[0.0, 1.0], t=2.0)  # the line
        [-1.0, 2.0]
    """
    k = len(probes)
    if times is None:
        base = [0.0] * (k - 1) + [1.0]
        own = [base] * (k - 1)  # point j's own weights under the constraint: replay too
    else:
        base = [0.0] * (k - 2) + lagrange_weights(times[-2:], t)
        own = [[0.0] * (k - 2) + lagrange_weights(times[-2:], tj) for tj in times[: k - 2]]
    if not own:
        return base
    columns = [[float(i == j) - w for i, w in enumerate(weights)] for j, weights in enumerate(own)]
    dtype, n = torch.promote_types(probe.dtype, torch.float32), probe.shape[0]
    flat = [p.to(dtype).reshape(n, -1) for p in probes]
    dirs = torch.stack([sum(c * f for c, f in zip(col, flat, strict=True) if c) for col in columns], 1)
    rest = probe.to(dtype).reshape(n, -1) - sum(b * f for b, f in zip(base, flat, strict=True) if b)
    gram = dirs @ dirs.transpose(1, 2)  # (n, d, d)
    scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(torch.finfo(dtype).tiny)[:, None, None]
    ridge = 10 * torch.finfo(dtype).eps * scale * torch.eye(gram.shape[-1], dtype=dtype, device=gram.device)
    s = torch.linalg.solve_ex(gram + ridge, dirs @ rest.unsqueeze(-1))[0][..., 0]  # (n, d)
    return [b + sum(s[:, j] * col[i] for j, col in enumerate(columns)) for i, b in enumerate(base)]


def _weighted_sum(leaves: tuple, weights: list) -> Any:
    """sum_i w_i leaf_i for tensors, in their dtype; the newest leaf for anything else. Weights are
    floats, or per-sample tensors (``fitted_weights``): then a leaf not batched like them is replayed."""
    last = leaves[-1]
    if not isinstance(last, torch.Tensor):
        return last
    if isinstance(weights[-1], torch.Tensor):
        if last.shape[0] != weights[-1].shape[0]:
            return last  # not batched like the probe: replay
        out = sum(
            leaf * w.reshape(-1, *[1] * (leaf.dim() - 1)) for leaf, w in zip(leaves, weights, strict=True)
        )
        return out.to(last.dtype)
    out = last * weights[-1]
    for leaf, w in zip(leaves[:-1], weights[:-1], strict=True):
        out.add_(leaf, alpha=w)
    return out


class Zeros:
    """The paper's Table 5 ablation: a cached call hands out zeros of the kept result's layout."""

    name, time, probes = "zeros", "step", False

    def keep(self, kept: Any, value: Any, t: float, probe: torch.Tensor | None = None) -> Any:
        return None

    def give(self, kept: Any, layout: tuple, t: float, probe: torch.Tensor | None = None) -> Any:
        return placeholder(*layout, torch.zeros)


REPLAY = Replay()


def act_for(
    reuse: str = "cache", order: int | None = None, time: str | None = None, fallback: bool | None = None
):
    """The act of a configuration's ``reuse``, ``order``, ``time`` and ``fallback`` (``DeepCacheConfig``)."""
    if reuse == "forecast":
        return Forecast(order or 2, time or "timestep", bool(fallback))
    return {"cache": REPLAY, "zeros": Zeros()}[reuse]
