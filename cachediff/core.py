"""The caching core: DeepCache's algorithm (Ma, Fang, Wang 2024, Section 3) on hooks of an unmodified model.

Every accelerator of this library is a *session* on one denoiser, built from three parts:

- **cut**: a role per module (``Group.roles``). ``SKIP`` modules run on full calls only; the
  ``PRODUCE`` module's output is the feature kept from a full call (DeepCache's deep feature, which
  the shallow branch consumes); a ``RESIDUAL`` module keeps its output minus its input and re-adds it
  to its new input (transformer blocks). ``cachediff.unets.branch_plan`` cuts a U-Net at a skip
  branch; ``cachediff.modules.dit_rule`` cuts a DiT's middle blocks.
- **decide**: per call, a ``cachediff.policy`` policy says full or cached: a static rule of steps
  (uniform, non-uniform, explicit, windows, refinements) or the adaptive one, which reads the change
  of the shallow feature: the input of the group's first module, computed afresh on every call.
- **act**: what a cached call hands out in place of a kept result: ``Replay`` (DeepCache),
  ``Forecast`` (the polynomial through the results of the last k full calls, evaluated at the cached
  call's time), ``Zeros`` (the paper's Table 5 ablation). An act is one class with ``keep`` and
  ``give``.

Per denoiser call, for each group, top to bottom::

    step, slot = clock.begin()                  # which step of the run, which call within the step
    full = policy.decide(step)                  # None: wait for the probe
    full |= slot is new or its input changed    # fail open: nothing stale is ever reused
    full |= something reads a skipped module    # a forward hook on it, an attention-storing processor
    a call past the end of the scheduler's run  # another pipeline's: runs as the original, keeps nothing
    on reaching the group's first module:       # the probe (adaptive schedule, track_change)
        change = |x - x_prev| / |x_prev|;  full = policy.resolve(step, change) if undecided
    SKIP:     full -> run, record the output layout;   cached -> an uninitialised tensor of it
    PRODUCE:  full -> run, kept = act.keep(kept, out, t);      cached -> act.give(kept, t)
    RESIDUAL: full -> run, kept = act.keep(kept, out - x, t);  cached -> x + act.give(kept, t)

where t is the call's time (``act.time``: the step index, or the scheduler's timestep).

A cached call's SKIP placeholders flow only into other skipped modules, so they cost no compute and
hold no memory between calls; the only memory held is what the act keeps.

The definition the code must equal, on a U-Net whose ops are listed in run order (down ops each
producing one skip, up ops each consuming one), is the reference in ``tests/test_toy.py``::

    h = conv_in(x) + t; skips = [h]
    for op in down[: all if full else branch]:  h = op(h); skips.append(h)
    if cached: h = kept; up = up[from the op consuming skip `branch`]
    for op, s in up:
        if s == branch and full: kept = h
        h = op(h if s is None else h + skips[s])

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    >>> group = Group({"0": PRODUCE}, Static(lambda n: lambda step: step % 2 == 0))
    >>> with Session(net, [group]) as session:
    ...     outs = [net(torch.ones(1, 2)) for _ in range(3)]
    >>> session.stats.pattern, torch.equal(outs[0], outs[1])
    ('FCF', True)
"""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch.utils import _pytree as pytree

from .clock import StepClock
from .hooks import Hooks, clean
from .policy import History, Policy, Static, relative_change
from .stats import Call, RunStats, Stopwatch

SKIP, PRODUCE, RESIDUAL = "skip", "produce", "residual"  # the roles of a cut (``unets.BranchPlan.roles``)
ROLES = (SKIP, PRODUCE, RESIDUAL)

#: Attention processors that record what their module computes for the pipeline to read after the
#: call (diffusers' self-attention guidance, Attend-and-Excite, Pix2Pix-Zero, LEDITS++): where one
#: sits in a module that a cached call skips, what it recorded would be stale, so calls run in full.
RECORDING_PROCESSORS = frozenset(
    {
        "CrossAttnStoreProcessor",
        "AttendExciteAttnProcessor",
        "Pix2PixZeroAttnProcessor",
        "LEDITSCrossAttnProcessor",
    }
)

#: Which session has hooks on which model (kept outside the model, which stays untouched).
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# ----------------------------------------------------------------------------- act
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
        self.order, self.time, self.fallback = order, time, fallback
        self.probes = fallback

    def keep(self, kept: Any, value: Any, t: float, probe: torch.Tensor | None = None) -> Any:
        points = [p for p in kept or () if p.t != t]  # a repeated time (PLMS) replaces its point
        return tuple(points + [_Point(t, value, probe if self.fallback else None)])[-self.order :]

    def give(self, kept: Any, layout: tuple, t: float, probe: torch.Tensor | None = None) -> Any:
        times = [p.t for p in kept]
        weights = [
            math.prod((t - tj) / (ti - tj) for j, tj in enumerate(times) if j != i)
            for i, ti in enumerate(times)
        ]
        out = pytree.tree_map(lambda *leaves: _weighted_sum(leaves, weights), *[p.value for p in kept])
        probes = tuple(p.probe for p in kept)
        if not self.fallback or len(kept) < 2 or probe is None or any(p is None for p in probes):
            return out
        missed = (probe - _weighted_sum(probes, weights)).square().sum()
        replay_missed = (probe - probes[-1]).square().sum()
        trusted = missed <= replay_missed  # a 0-d bool tensor: stays on the device
        return pytree.tree_map(
            lambda f, last: torch.where(trusted, f, last) if isinstance(f, torch.Tensor) else f,
            out,
            kept[-1].value,
        )


class _Point(NamedTuple):
    """A full call's result kept by ``Forecast``: its time, its value and (with ``fallback``) the
    group's probe of that call."""

    t: float
    value: Any
    probe: torch.Tensor | None


def _weighted_sum(leaves: tuple, weights: list[float]) -> Any:
    """sum_i w_i leaf_i for tensors, in their dtype; the newest leaf for anything else."""
    if not isinstance(leaves[-1], torch.Tensor):
        return leaves[-1]
    out = leaves[-1] * weights[-1]
    for leaf, w in zip(leaves[:-1], weights[:-1], strict=True):
        out.add_(leaf, alpha=w)
    return out


class Zeros:
    """The paper's Table 5 ablation: a cached call hands out zeros of the kept result's layout."""

    name, time, probes = "zeros", "step", False

    def keep(self, kept: Any, value: Any, t: float, probe: torch.Tensor | None = None) -> Any:
        return None

    def give(self, kept: Any, layout: tuple, t: float, probe: torch.Tensor | None = None) -> Any:
        return _placeholder(*layout, torch.zeros)


REPLAY = Replay()


def act_for(
    reuse: str = "cache", order: int | None = None, time: str | None = None, fallback: bool | None = None
):
    """The act of a configuration's ``reuse``, ``order``, ``time`` and ``fallback`` (``DeepCacheConfig``)."""
    if reuse == "forecast":
        return Forecast(order or 2, time or "timestep", bool(fallback))
    return {"cache": REPLAY, "zeros": Zeros()}[reuse]


# ----------------------------------------------------------------------------- cut
@dataclass(frozen=True)
class Group:
    """Modules that are full or cached together: ``roles`` maps module names (``get_submodule``
    paths) to ``SKIP``, ``PRODUCE`` or ``RESIDUAL``; ``policy`` decides each call."""

    roles: dict[str, str]
    policy: Policy

    def __post_init__(self) -> None:
        bad = {n: r for n, r in self.roles.items() if r not in ROLES}
        if bad:
            raise ValueError(f"roles must be one of {', '.join(ROLES)}; got {bad}")


# ----------------------------------------------------------------------------- state


@dataclass
class _Kept:
    """What one module call position keeps between calls."""

    key: tuple  # layout of the module's first input; a change makes the module run
    layout: tuple  # layout of its output (placeholders, zeros)
    value: Any = None  # what the act keeps


@dataclass
class _GroupState:
    """One group's state in one slot."""

    history: History = field(default_factory=History)
    shallow: torch.Tensor | None = None  # the probe's input on the previous call
    kept: dict = field(default_factory=dict)  # (module name, occurrence) -> _Kept


@dataclass
class _Slot:
    """The state of one call position within a step (usually the only one)."""

    key: tuple  # (shape, dtype, device) of the input sample; a change forces a full call
    groups: list[_GroupState]


@dataclass
class _Active:
    """The call in progress."""

    step: int
    time: float  # in the act's variable (step index or timestep)
    slot: _Slot
    full: list  # per group: True, False, or None until the probe resolves it
    probed: list  # per group: whether the probe ran
    change: float | None = None
    reused: list = field(default_factory=list)  # names of the modules that reused their kept result
    occurrence: dict = field(default_factory=dict)


@dataclass
class _Skippable:
    """The modules a cached call skips (the roles' modules and everything inside them), their hook
    dicts (stable objects that ``register_forward_hook`` fills) and their attention modules."""

    modules: list[tuple[str, torch.nn.Module]] = field(default_factory=list)
    hooks: list[dict] = field(default_factory=list)
    attention: list[tuple[str, torch.nn.Module]] = field(default_factory=list)

    @classmethod
    def of(cls, model: torch.nn.Module, names) -> _Skippable:
        modules = [
            (f"{name}.{sub}".rstrip("."), m)
            for name in names
            for sub, m in model.get_submodule(name).named_modules()
        ]
        hooks = [d for _, m in modules for d in (m._forward_hooks, m._forward_pre_hooks)]
        return cls(modules, hooks, [(n, m) for n, m in modules if hasattr(m, "processor")])


def _recording(module: torch.nn.Module) -> str | None:
    """The name of the module's attention processor if it records what it computes, else None."""
    name = type(getattr(module, "processor", None)).__name__
    return name if name in RECORDING_PROCESSORS else None


# ----------------------------------------------------------------------------- the session
class Session:
    """Caching on one denoiser: hooks, step clock, run statistics and the per-call slot.

    Args:
        model: the denoiser, left unmodified (hooks on instance methods, removed by ``disable``).
        groups: the cut and the policy of each group of modules; a module in several groups follows
            the first.
        act: what cached calls hand out (``Replay()``, ``Forecast(order)``, ``Zeros()``; ``act_for``
            by a configuration's fields).
        pipeline: optional owner of a ``.scheduler`` whose ``step`` calls count steps and whose
            ``set_timesteps`` calls start new runs (``cachediff.clock``). Without it every call is
            one step and ``reset()`` starts a new run.
        track_change: record the shallow feature's per-call change in ``stats`` (the adaptive
            policy always does; it costs one stored feature).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        groups: Sequence[Group],
        act=REPLAY,
        pipeline=None,
        track_change: bool = False,
    ):
        self.model, self.pipeline, self.track_change = model, pipeline, track_change
        self._hooks, self._skippable = Hooks(), _Skippable()
        self._local = threading.local()
        self.clock = StepClock(pipeline, on_new_run=self._new_run)
        self._set_plan(groups, act)
        self.reset()

    # ----------------------------------------------------------------- lifecycle
    @property
    def enabled(self) -> bool:
        return len(self._hooks) > 0

    def enable(self):
        """Install the hooks (harmless if already installed) and start a new run. All or nothing:
        if installing fails, every hook installed so far is removed."""
        owner = _OWNERS.get(self.model)
        if owner is not None and owner is not self:
            raise RuntimeError(
                f"this {type(self.model).__name__} is already accelerated by another enabled engine; "
                "disable that first"
            )
        if not self.enabled:
            _OWNERS[self.model] = self
            try:
                self._hooks.wrap(self.model, self._wrap_root)
                for name, (g, role) in self._modules.items():
                    self._hooks.wrap(self.model.get_submodule(name), self._wrap_module(name, g, role))
                self._skippable = _Skippable.of(self.model, self._modules)
                self.clock.start()
            except BaseException:
                self.disable()
                raise
        else:
            self.clock.start()
        return self

    def disable(self) -> None:
        """Remove every hook, restoring the original methods exactly, and drop what is kept.

        ``stats`` still describes the last run."""
        if _OWNERS.get(self.model) is self:
            del _OWNERS[self.model]
        self._hooks.remove_all()
        self.clock.detach()
        clean(_held(self.model, self.pipeline))  # copies made while enabled (Text2Video-Zero's scheduler)
        self._slots = {}

    def __enter__(self):
        return self.enable()

    def __exit__(self, *exc) -> None:
        self.disable()

    def reset(self, num_steps: int | None = None) -> None:
        """Start a new run: step 0, nothing kept. ``num_steps`` is needed by policies that depend on
        the run length on a bare model (a pipeline's scheduler tells the session)."""
        self.clock.reset(num_steps)

    def advance(self) -> None:
        """End the current step (for callers that drive a bare model with several calls per step)."""
        self.clock.advance()

    @property
    def cache_nbytes(self) -> int:
        """Bytes held between calls: what the act keeps and the probe's previous inputs."""
        return tree_nbytes(
            [
                ([k.value for k in state.kept.values()], state.shallow)
                for slot in self._slots.values()
                for state in slot.groups
            ]
        )

    def twin(self, model: torch.nn.Module) -> Session:
        """The same cut and act on another model of the same architecture (a ``meta`` copy, say),
        with a policy that makes call 0 full and every later call cached: for counting per-call MACs."""
        first_full = Static(lambda n: lambda step: step == 0)
        groups = [Group(g.roles, first_full) for g in self._groups]
        return Session(model, groups, self.act)

    # ----------------------------------------------------------------- plan
    def _set_plan(self, groups: Sequence[Group], act) -> None:
        self._groups, self.act = list(groups), act
        self._modules: dict[str, tuple[int, str]] = {}  # module name -> (group index, role)
        for g, group in enumerate(self._groups):
            for name, role in group.roles.items():
                self._modules.setdefault(name, (g, role))
        self.reused = dict.fromkeys(self._modules, 0)

    def _new_run(self, num_steps: int | None) -> None:
        self._slots: dict[int, _Slot] = {}
        self._active: _Active | None = None
        self.stats = RunStats()
        self.reused = dict.fromkeys(self._modules, 0)
        for group in self._groups:
            group.policy.start(num_steps)

    def _probes(self, g: int) -> bool:
        return self.track_change or self._groups[g].policy.probes or self.act.probes

    # ----------------------------------------------------------------- hooks
    def _wrap_root(self, original: Callable) -> Callable:
        def forward(*args, **kwargs):
            # Which step and slot; decide per group, full wherever the slot is new or its input changed.
            with self.clock.lock:  # the run's state, taken at once: another thread may start a new run
                position = self.clock.begin(lambda: _timestep(args, kwargs, anywhere=True))
                slots, stats, reused = self._slots, self.stats, self.reused
            if position is None:  # another thread's call while this run goes on: the original's
                return original(*args, **kwargs)
            step, index = position
            sample = args[0] if args else kwargs.get("sample", _first_tensor(kwargs))  # (B, C, H, W)
            watch = Stopwatch(sample.device if isinstance(sample, torch.Tensor) else torch.device("cpu"))
            if self.clock.beyond_run(step):  # not this run's call: run it as the original, keep nothing
                try:
                    return original(*args, **kwargs)
                finally:
                    stats.calls.append(Call(step, True, None, watch.stop()))
                    self.clock.end()
            key = _key(sample)
            slot = slots.get(index)
            old = slot.groups if slot is not None else [None] * len(self._groups)
            full = [
                g.policy.decide(step, s.history if s else None)
                for g, s in zip(self._groups, old, strict=True)
            ]
            if slot is None or slot.key != key:
                slot = slots[index] = _Slot(key, [_GroupState() for _ in self._groups])
                full = [True] * len(self._groups)
            if not all(f is True for f in full) and self._read_while_skipped():
                full = [True] * len(self._groups)
            time = self._time(step, args, kwargs)
            self._active = active = _Active(step, time, slot, full, [False] * len(self._groups))
            try:
                return original(*args, **kwargs)
            finally:
                for state, decided in zip(slot.groups, active.full, strict=True):
                    state.history.record(decided is not False)
                for name in active.reused:
                    reused[name] += 1
                stats.calls.append(Call(step, not active.reused, active.change, watch.stop()))
                self._active = None
                self.clock.end()

        return forward

    @property
    def _active(self) -> _Active | None:
        """The call in progress in this thread (module hooks of other threads' calls see none)."""
        return getattr(self._local, "active", None)

    @_active.setter
    def _active(self, active: _Active | None) -> None:
        self._local.active = active

    def _read_while_skipped(self) -> bool:
        """Whether something outside reads a module that a cached call would skip (a forward hook on
        it, as self-attention guidance registers; a ``RECORDING_PROCESSORS`` processor): then the
        call runs in full, with a warning, so that what it reads is current. About 20 us on SD's
        U-Net: one C-level ``any`` over the skippable modules' hook dicts, one look at each
        attention processor."""
        if not any(self._skippable.hooks) and not any(_recording(m) for _, m in self._skippable.attention):
            return False
        for name, module in self._skippable.modules:
            recording = _recording(module)
            if module._forward_hooks or module._forward_pre_hooks or recording:
                what = f"the attention processor {recording}" if recording else "a forward hook"
                warnings.warn(
                    f"{name} carries {what}, which reads it on every call, so calls run in full while it "
                    "is there (no speedup); self-attention guidance and attention-editing pipelines do this",
                    stacklevel=3,
                )
                break
        return True

    def _time(self, step: int, args: tuple, kwargs: dict) -> float:
        """The call's time in the act's variable: the step index, or the call's timestep: its
        ``timestep`` argument where that is on the host (a number or a CPU tensor: no
        synchronisation), else the scheduler's timestep of the step (a host copy made once per run),
        else the step index."""
        if self.act.time == "step":
            return float(step)
        t = _timestep(args, kwargs)
        if t is None:
            t = self.clock.time(step)
        return float(step) if t is None else t

    def _probe(self, active: _Active, g: int, state: _GroupState, x: torch.Tensor) -> None:
        """The shallow feature's change since the previous call; it resolves an undecided call.

        The change stays on the device (recorded for ``stats``) unless the policy reads it: the
        adaptive policy's decision is the one host synchronisation of a call (``to_host``)."""
        x = x.detach()
        change = None
        if state.shallow is not None and state.shallow.shape == x.shape:
            change = relative_change(x, state.shallow)  # a 0-d tensor
            if self._groups[g].policy.probes:
                change = to_host(change)
                state.history.changes.append(change)
        state.shallow, active.change = x.clone(), change
        if active.full[g] is None:
            active.full[g] = self._groups[g].policy.resolve(active.step, state.history, change)

    def _wrap_module(self, name: str, g: int, role: str) -> Callable[[Callable], Callable]:
        def factory(original: Callable) -> Callable:
            def forward(*args, **kwargs):
                active = self._active
                if active is None:  # called outside a denoiser call: behave as the original
                    return original(*args, **kwargs)
                state = active.slot.groups[g]
                x = _first_tensor((args, kwargs))
                if not active.probed[g] and self._probes(g) and x is not None:  # the group's first module
                    active.probed[g] = True
                    self._probe(active, g, state, x)
                n = active.occurrence[name] = active.occurrence.get(name, -1) + 1
                kept = state.kept.get((name, n))
                key = _key(x)
                probe = state.shallow if active.probed[g] else None
                if not active.full[g] and kept is not None and kept.key == key:
                    return self._cached(active, name, role, kept, x, probe)
                out = original(*args, **kwargs)
                layout = _layout(out)
                if role == SKIP:
                    state.kept[(name, n)] = _Kept(key, layout)
                    return out
                if role == RESIDUAL:
                    _check_residual(name, out, x)
                previous = kept.value if kept is not None and kept.key == key else None
                value = out - x if role == RESIDUAL else out
                state.kept[(name, n)] = _Kept(key, layout, self.act.keep(previous, value, active.time, probe))
                return out if role == RESIDUAL else _clone(out)  # the model may modify an output in place

            return forward

        return factory

    def _cached(self, active: _Active, name: str, role: str, kept: _Kept, x: torch.Tensor, probe) -> Any:
        """What a module hands out on a cached call (``probe``: the group's shallow feature of this
        call, where the probe ran)."""
        if role == SKIP:  # read only by other skipped modules
            return _placeholder(*kept.layout, torch.empty)
        active.reused.append(name)  # counted after the call: no run-long state inside a compiled graph
        value = self.act.give(kept.value, kept.layout, active.time, probe)
        return x + value if role == RESIDUAL else _clone(value)


def _timestep(args: tuple, kwargs: dict, anywhere: bool = False) -> float | None:
    """A call's timestep argument (the second positional one, or ``timestep`` / ``timesteps``) as a
    host float: a number, or the first element of a tensor on the CPU, or with ``anywhere`` on any
    device (a host synchronisation there: a timed run places each call by it)."""
    t = args[1] if len(args) > 1 else kwargs.get("timestep", kwargs.get("timesteps"))
    if isinstance(t, torch.Tensor) and t.numel() > 0 and (anywhere or t.device.type == "cpu"):
        t = t.reshape(-1)[0].item()
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def _check_residual(name: str, out, x: torch.Tensor) -> None:
    if not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor) or out.shape != x.shape:
        shape = tuple(getattr(x, "shape", ()))
        raise TypeError(
            f"{name}: residual mode needs a tensor output shaped like the input {shape}; use mode='output'"
        )


def _held(model: torch.nn.Module, pipeline) -> list:
    """The model's modules, and the objects a pipeline holds (the modules of its models)."""
    objects = list(model.modules())
    for value in vars(pipeline).values() if pipeline is not None else ():
        if isinstance(value, torch.nn.Module):
            objects += value.modules()
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            objects.append(value)
    return objects


def to_host(value: torch.Tensor) -> float:
    """A 0-d tensor's value on the host: the only host synchronisation of the core (adaptive
    schedule only, once per call)."""
    return value.item()


def tree_nbytes(tree) -> int:
    """Bytes of all tensors in a nested structure (tuples, lists, dicts, model outputs)."""
    return sum(t.nbytes for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor))


def _layout(out) -> tuple[list, Any]:
    """Shapes and dtypes of an output tree, enough to build a placeholder of the same structure."""
    leaves, spec = pytree.tree_flatten(out)
    meta = [(t.shape, t.dtype, t.device) if isinstance(t, torch.Tensor) else ("value", t) for t in leaves]
    return meta, spec


def _placeholder(meta: list, spec, make: Callable = torch.empty) -> Any:
    """An output of the recorded layout: ``torch.empty`` (no memory touched) where only skipped
    modules read it, ``torch.zeros`` where a running module does."""
    leaves = [m[1] if m[0] == "value" else make(m[0], dtype=m[1], device=m[2]) for m in meta]
    return pytree.tree_unflatten(leaves, spec)


def _first_tensor(tree) -> torch.Tensor | None:
    return next((t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)), None)


def _key(x) -> tuple | None:
    """The layout of a call's first input: a change means nothing kept for it may be reused."""
    return (tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else None


def _clone(out) -> Any:
    return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)
