"""The DeepCache engine: forward hooks on an unmodified U-Net and one small state machine.

Per U-Net call the engine decides *full* or *cached* from its own step counter (never from the
timestep value), then the hooks on the deep modules act:

- full step: deep modules run; the producer's output (the deep feature) is stored, and every deep
  module's output *layout* (shapes and dtypes only) is recorded;
- cached step: the producer returns a copy of the stored feature; other deep modules return zero
  placeholders of the recorded layout, which only flow into other skipped modules, so they cost no
  compute and hold no memory between steps.

Steps are counted by ``scheduler.step`` calls when the engine is attached to a pipeline (so PLMS and
Heun, which evaluate one timestep twice, count two steps, and several U-Net calls within one step,
such as separate cond/uncond passes, each get their own cache *slot*), or one step per U-Net call
otherwise. ``scheduler.set_timesteps`` (the start of every pipeline call), ``enable`` and ``disable``
reset all state, so consecutive calls give the images of fresh runs.

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

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

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


@dataclass
class RunStats:
    """What the last run did: one entry per U-Net call (step index, full or cached)."""

    calls: list[tuple[int, bool]] = field(default_factory=list)

    @property
    def full_steps(self) -> int:
        return sum(full for _, full in self.calls)

    @property
    def cached_steps(self) -> int:
        return len(self.calls) - self.full_steps

    @property
    def pattern(self) -> str:
        """'F' for a full call, 'C' for a cached one, in call order."""
        return "".join("F" if full else "C" for _, full in self.calls)


class DeepCacheEngine:
    """DeepCache on one U-Net.

    Args:
        unet: a supported diffusers U-Net (see ``cachediff.unets.SPECS``), left unmodified.
        config: the caching configuration.
        pipeline: optional owner of a ``.scheduler`` whose ``step`` calls count steps and whose
            ``set_timesteps`` calls start new runs. Without it every U-Net call is one step and
            ``reset()`` starts a new run.
    """

    def __init__(self, unet: torch.nn.Module, config: DeepCacheConfig = DeepCacheConfig(), pipeline=None):
        self.unet = unet
        self.pipeline = pipeline
        self._hooks = Hooks()
        self._scheduler_hooks = Hooks()
        self._scheduler = None
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
        self.reset()
        return self

    def disable(self) -> None:
        """Remove every hook, restoring the original forwards exactly, and drop the cache.

        ``stats`` still describes the last run."""
        if _OWNERS.get(self.unet) is self:
            del _OWNERS[self.unet]
        self._hooks.remove_all()
        self._detach_scheduler()
        self._clear()

    def reset(self, num_steps: int | None = None) -> None:
        """Start a new run: step 0, empty cache. ``num_steps`` is needed only by non-uniform schedules."""
        self._clear(num_steps)
        self.stats = RunStats()

    def _clear(self, num_steps: int | None = None) -> None:
        self._step, self._slot_index = 0, 0
        self._slots: dict[int, _Slot] = {}
        self._num_steps = num_steps
        self._rule: Callable[[int], bool] | None = None
        self._active: _Slot | None = None
        self._full = True

    def advance(self) -> None:
        """End the current step (called after each ``scheduler.step``)."""
        self._step += 1
        self._slot_index = 0

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by the cache between steps (the stored deep features of every slot)."""
        return tree_nbytes([slot.feature for slot in self._slots.values()])

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

    # ----------------------------------------------------------------- hooks
    def _wrap_unet(self, original: Callable) -> Callable:
        def forward(*args, **kwargs):
            self._sync_scheduler()
            sample = args[0] if args else kwargs["sample"]
            key = (tuple(sample.shape), sample.dtype, sample.device)
            slot = self._slots.get(self._slot_index)
            full = self._is_full_step(self._step) or slot is None or slot.key != key
            if full:
                slot = self._slots[self._slot_index] = _Slot(key)
            self._active, self._full = slot, full
            try:
                return original(*args, **kwargs)
            finally:
                self._active = None
                self.stats.calls.append((self._step, full))
                self._slot_index += 1
                if self._scheduler is None:
                    self.advance()

        return forward

    def _wrap_deep(self, name: str) -> Callable[[Callable], Callable]:
        is_producer = name == self.plan.producer

        def factory(original: Callable) -> Callable:
            def forward(*args, **kwargs):
                slot = self._active
                if slot is None:  # called outside a U-Net forward: behave as the original
                    return original(*args, **kwargs)
                if self._full:
                    out = original(*args, **kwargs)
                    slot.layouts[name] = _layout(out)
                    if is_producer:  # store it, hand out a copy: the model may modify it in place
                        slot.feature = out
                        return _clone(out)
                    return out
                if is_producer and self.config.reuse == "cache":
                    return _clone(slot.feature)
                return _placeholder(*slot.layouts[name])  # zeros (also the "zeros" ablation)

            return forward

        return factory

    def _is_full_step(self, step: int) -> bool:
        if self._rule is None:
            self._rule = self.config.full_step_rule(self._num_steps)
        return self._rule(step)

    # ----------------------------------------------------------------- scheduler clock
    def _sync_scheduler(self) -> None:
        """Follow the pipeline's scheduler; a newly swapped-in scheduler starts a new run."""
        current = getattr(self.pipeline, "scheduler", None)
        if current is self._scheduler:
            return
        self._detach_scheduler()
        if current is not None:
            self._scheduler = current
            self._scheduler_hooks.wrap(current, self._after(self._new_run), attr="set_timesteps")
            self._scheduler_hooks.wrap(current, self._after(self.advance), attr="step")
        self.reset(self._scheduler_steps())

    def _detach_scheduler(self) -> None:
        self._scheduler_hooks.remove_all()
        self._scheduler = None

    def _new_run(self) -> None:
        self.reset(self._scheduler_steps())

    def _scheduler_steps(self) -> int | None:
        timesteps = getattr(self._scheduler, "timesteps", None)
        return len(timesteps) if timesteps is not None else None

    @staticmethod
    def _after(callback: Callable[[], None]) -> Callable[[Callable], Callable]:
        def factory(original: Callable) -> Callable:
            def method(*args, **kwargs):
                out = original(*args, **kwargs)
                callback()
                return out

            return method

        return factory


def tree_nbytes(tree) -> int:
    """Bytes of all tensors in a nested structure (tuples, lists, dicts, model outputs)."""
    return sum(t.nbytes for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor))


def _layout(out) -> tuple[list, Any]:
    """Shapes and dtypes of an output tree, enough to build a placeholder of the same structure."""
    leaves, spec = pytree.tree_flatten(out)
    meta = [(t.shape, t.dtype, t.device) if isinstance(t, torch.Tensor) else ("value", t) for t in leaves]
    return meta, spec


def _placeholder(meta: list, spec) -> Any:
    leaves = [m[1] if m[0] == "value" else torch.zeros(m[0], dtype=m[1], device=m[2]) for m in meta]
    return pytree.tree_unflatten(leaves, spec)


def _clone(out) -> Any:
    return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)
