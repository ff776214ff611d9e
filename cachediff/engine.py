"""The DeepCache engine: forward hooks on an unmodified U-Net and one small state machine.

Per U-Net call the engine decides *full* or *cached* from its own step counter (never from the
timestep value), then the hooks on the deep modules act:

- full step: deep modules run; the producer's output (the deep feature) is stored, and every deep
  module's output *layout* (shapes and dtypes only) is recorded;
- cached step: the producer returns a copy of the stored feature; other deep modules return zero
  placeholders of the recorded layout, which only flow into other skipped modules, so they cost no
  compute and hold no memory between steps.

Steps are counted by a ``StepClock`` (``cachediff.clock``): ``scheduler.step`` calls with a pipeline,
one step per U-Net call otherwise; several U-Net calls within one step (separate cond/uncond passes)
each get their own cache *slot*. ``scheduler.set_timesteps`` (the start of every pipeline call),
``enable`` and ``disable`` reset all state, so consecutive calls give the images of fresh runs.

The adaptive schedule decides inside the call: the shallow down path runs on every step anyway, so
when the first deep module is reached its input (the shallow feature) is compared with the previous
step's; once the accumulated relative change since the last full step reaches the threshold, this
call runs as a full step. The decision costs one subtraction and two means.

Example:
    >>> import torch
    >>> from diffusers import UNet2DModel
    >>> unet = UNet2DModel(block_out_channels=(32, 64), down_block_types=("DownBlock2D",) * 2,
    ...                    up_block_types=("UpBlock2D",) * 2, norm_num_groups=8, sample_size=8)
    >>> engine = DeepCacheEngine(unet, DeepCacheConfig(interval=3, branch=0)).enable()
    >>> x = torch.randn(1, 3, 8, 8)
    >>> _ = [unet(x, t) for t in (900, 800, 700, 600)]
    >>> engine.stats.pattern
    'FCCF'
    >>> engine.disable()
"""

from __future__ import annotations

import math
import statistics
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch.utils import _pytree as pytree

from .clock import StepClock
from .config import DeepCacheConfig
from .hooks import Hooks
from .unets import BranchPlan, branch_plan

#: Which engine has hooks on which U-Net (kept outside the model, which stays untouched).
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class _Slot:
    """The cache of one U-Net call position within a step (usually the only one)."""

    key: tuple  # (shape, dtype, device) of the input sample; a change forces a full step
    feature: Any = None  # the producer's output on the last full step
    layouts: dict = field(default_factory=dict)  # deep module name -> (leaf layouts, tree spec)
    shallow: torch.Tensor | None = None  # the shallow feature of the previous step (change tracking)
    drift: float = 0.0  # accumulated relative change since the last full step
    changes: list = field(default_factory=list)  # every measured single-step change
    cached_run: int = 0  # cached steps since the last full step
    full_count: int = 0  # full steps of this slot in the run


class Call(NamedTuple):
    """One U-Net call of a run."""

    step: int
    full: bool
    change: float | None  # relative change of the shallow feature since the previous step, if tracked
    seconds: float  # wall time of the call


@dataclass
class RunStats:
    """What the last run did: one ``Call`` per U-Net call.

    Example:
        >>> s = RunStats([Call(0, True, None, 2.0), Call(1, False, 0.1, 1.0), Call(2, False, 0.2, 1.0)])
        >>> s.pattern, s.full_steps, s.cached_steps, s.realised_speedup
        ('FCC', 1, 2, 1.5)
        >>> s.average_macs(full=10.0, cached=4.0)
        6.0
    """

    calls: list[Call] = field(default_factory=list)

    @property
    def full_steps(self) -> int:
        return sum(c.full for c in self.calls)

    @property
    def cached_steps(self) -> int:
        return len(self.calls) - self.full_steps

    @property
    def pattern(self) -> str:
        """'F' for a full call, 'C' for a cached one, in call order."""
        return "".join("F" if c.full else "C" for c in self.calls)

    @property
    def changes(self) -> list[float | None]:
        """The per-call change metric (``None`` where it was not tracked)."""
        return [c.change for c in self.calls]

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.calls)

    @property
    def realised_speedup(self) -> float:
        """Time the run would take with every call full (median full call) over the time it took."""
        full = [c.seconds for c in self.calls if c.full]
        return len(self.calls) * statistics.median(full) / self.seconds if full and self.seconds else 1.0

    def average_macs(self, full: float, cached: float) -> float:
        """Average MACs per call, given the MACs of a full and of a cached call."""
        return (self.full_steps * full + self.cached_steps * cached) / max(len(self.calls), 1)

    def summary(self, full_macs: float | None = None, cached_macs: float | None = None) -> str:
        """One line: calls, full/cached, realised speedup and, given MACs per call, MACs saved."""
        line = (
            f"{len(self.calls)} calls: {self.full_steps} full, {self.cached_steps} cached; "
            f"realised speedup {self.realised_speedup:.2f}x"
        )
        if full_macs is not None and cached_macs is not None and self.calls:
            saved = 1 - self.average_macs(full_macs, cached_macs) / full_macs
            line += f"; MACs saved {100 * saved:.1f}%"
        return line


class DeepCacheEngine:
    """DeepCache on one U-Net.

    Args:
        unet: a supported diffusers U-Net (see ``cachediff.unets.SPECS``), left unmodified.
        config: the caching configuration.
        pipeline: optional owner of a ``.scheduler`` whose ``step`` calls count steps and whose
            ``set_timesteps`` calls start new runs. Without it every U-Net call is one step and
            ``reset()`` starts a new run.
        track_change: record the shallow feature's per-step change in ``stats`` for any schedule
            (the adaptive schedule always does; it costs one stored feature).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        config: DeepCacheConfig = DeepCacheConfig(),
        pipeline=None,
        track_change: bool = False,
    ):
        self.unet = unet
        self.pipeline = pipeline
        self.track_change = track_change
        self._hooks = Hooks()
        self.clock = StepClock(pipeline, on_new_run=self._new_run)
        self.configure(config)
        self.reset()

    # ----------------------------------------------------------------- public API
    @property
    def enabled(self) -> bool:
        return len(self._hooks) > 0

    def configure(self, config: DeepCacheConfig) -> DeepCacheEngine:
        """Set a new config (re-installing the hooks if enabled); raises on an invalid branch."""
        plan = branch_plan(self.unet, config.branch)
        was_enabled = self.enabled
        if was_enabled:
            self.disable()
        self.config, self.plan = config, plan
        if was_enabled:
            self.enable()
        return self

    def enable(self) -> DeepCacheEngine:
        """Install the hooks (harmless if already installed) and reset the state."""
        owner = _OWNERS.get(self.unet)
        if owner is not None and owner is not self:
            raise RuntimeError(
                "this U-Net is already accelerated by another enabled engine; disable that first"
            )
        if not self.enabled:
            _OWNERS[self.unet] = self
            self._hooks.wrap(self.unet, self._wrap_unet)
            for name in self.plan.deep:
                self._hooks.wrap(self.unet.get_submodule(name), self._wrap_deep(name))
        self.clock.start()
        return self

    def disable(self) -> None:
        """Remove every hook, restoring the original forwards exactly, and drop the cache.

        ``stats`` still describes the last run."""
        if _OWNERS.get(self.unet) is self:
            del _OWNERS[self.unet]
        self._hooks.remove_all()
        self.clock.detach()
        self._clear()

    def reset(self, num_steps: int | None = None) -> None:
        """Start a new run: step 0, empty cache. ``num_steps`` is needed by non-uniform and refined
        schedules on a bare U-Net (a pipeline's scheduler tells the engine)."""
        self.clock.reset(num_steps)

    def advance(self) -> None:
        """End the current step (for callers that drive a bare U-Net with several calls per step)."""
        self.clock.advance()

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by the cache between steps (stored deep features and tracked shallow features)."""
        return tree_nbytes([(slot.feature, slot.shallow) for slot in self._slots.values()])

    def describe(self) -> str:
        """A human-readable plan: the branch, the deep modules and the producer of the cached feature."""
        p: BranchPlan = self.plan
        name = type(self.unet).__name__
        lines = [
            f"{name}: branch {p.branch} (paper branch {p.branch + 1}) of 0..{p.num_branches - 1}",
            f"cached feature: output of {p.producer}",
            "skipped on cached steps: " + ", ".join(p.deep),
        ]
        return "\n".join(lines)

    # ----------------------------------------------------------------- state
    def _new_run(self, num_steps: int | None) -> None:
        self._clear()
        self.stats = RunStats()

    def _clear(self) -> None:
        self._slots: dict[int, _Slot] = {}
        self._rule: Callable[[int], bool] | None = None
        self._active: _Slot | None = None
        self._full: bool | None = True
        self._change: float | None = None

    @property
    def _tracks(self) -> bool:
        return self.track_change or self.config.schedule == "adaptive"

    def _decide(self, step: int, slot: _Slot | None) -> bool | None:
        """Full (True), cached (False) or undecided until the shallow feature is seen (None)."""
        if self._rule is None:
            config, n = self.config, self.clock.num_steps
            if config.schedule == "adaptive":
                forced = frozenset(config.forced_full_steps(n)) if config.refined else frozenset((0,))
                self._rule = forced.__contains__
            else:
                self._rule = config.full_step_rule(n)
        if self._rule(step):
            return True
        if self.config.schedule != "adaptive":
            return False
        if slot and self.config.max_cached is not None and slot.cached_run >= self.config.max_cached:
            return True
        return None

    def _observe(self, slot: _Slot, x: torch.Tensor) -> None:
        """Measure the shallow feature's change since the previous step; decide an undecided call."""
        x = x.detach()
        change = None
        if slot.shallow is not None and slot.shallow.shape == x.shape:
            change = float((x - slot.shallow).abs().mean() / slot.shallow.abs().mean().clamp_min(1e-12))
            slot.changes.append(change)
        slot.shallow, self._change = x.clone(), change
        if self._full is None:
            slot.drift += change or 0.0
            self._full = slot.drift >= self._threshold(slot)

    def _threshold(self, slot: _Slot) -> float:
        """The drift that triggers a full step.

        A fixed ``threshold`` if configured. Otherwise a budget of ceil(T / N) full steps, paced: the
        remaining budget is spread over the remaining steps, so a full step comes when the drift
        reaches the mean single-step change times the steps left per full step left. Drift above the
        average spends the budget early, below it saves it for later. Without a known run length T:
        N times the mean single-step change.
        """
        config, n = self.config, self.clock.num_steps
        if config.threshold is not None:
            return config.threshold
        mean = statistics.fmean(slot.changes or [0.0])
        if n is None:
            return config.interval * mean
        step = self.clock.step
        forced_ahead = sum(self._rule(s) for s in range(step + 1, n))
        budget_left = math.ceil(n / config.interval) - slot.full_count - forced_ahead
        return mean * (n - step) / budget_left if budget_left > 0 else math.inf

    # ----------------------------------------------------------------- hooks
    def _wrap_unet(self, original: Callable) -> Callable:
        def forward(*args, **kwargs):
            step, index = self.clock.begin()
            sample = args[0] if args else kwargs["sample"]
            key = (tuple(sample.shape), sample.dtype, sample.device)
            slot = self._slots.get(index)
            self._full = self._decide(step, slot)
            if slot is None or slot.key != key:
                slot = self._slots[index] = _Slot(key)
                self._full = True
            self._active, self._change, self._observed = slot, None, False
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if sample.device.type == "cuda":
                    torch.cuda.synchronize(sample.device)
                full = self._full is not False
                if full:
                    slot.drift, slot.cached_run = 0.0, 0
                    slot.full_count += 1
                else:
                    slot.cached_run += 1
                self.stats.calls.append(Call(step, full, self._change, time.perf_counter() - start))
                self._active = None
                self.clock.end()

        return forward

    def _wrap_deep(self, name: str) -> Callable[[Callable], Callable]:
        is_producer = name == self.plan.producer

        def factory(original: Callable) -> Callable:
            def forward(*args, **kwargs):
                slot = self._active
                if slot is None:  # called outside a U-Net forward: behave as the original
                    return original(*args, **kwargs)
                if self._tracks and not self._observed:  # the first deep module: the shallow feature
                    self._observed = True
                    self._observe(slot, _first_tensor((args, kwargs)))
                if self._full:
                    out = original(*args, **kwargs)
                    slot.layouts[name] = _layout(out)
                    if is_producer:  # store it, hand out a copy: the model may modify it in place
                        slot.feature = out
                        return _clone(out)
                    return out
                if is_producer and self.config.reuse == "cache":
                    return _clone(slot.feature)
                if is_producer:  # the "zeros" ablation
                    return _placeholder(*slot.layouts[name], torch.zeros)
                return _placeholder(*slot.layouts[name], torch.empty)  # only deep modules read it

            return forward

        return factory


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


def _first_tensor(tree) -> torch.Tensor:
    return next(t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor))


def _clone(out) -> Any:
    return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)
