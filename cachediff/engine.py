"""DeepCache on a U-Net: the caching core (``cachediff.core``) with the cut of a skip branch.

The cut comes from ``cachediff.unets.branch_plan``: every module deeper than the branch is ``SKIP``,
the last of them before the up-side layer that consumes skip b ``PRODUCE``s the deep feature. With
per-phase cuts (``DeepCacheConfig.phases``) there is one group per branch, the deepest first: a cached
step cut at c skips the groups of branches >= c and runs the others above the deep feature of c. The
policy comes from the configuration's schedule (``cachediff.policy.policy_for``), the act from its
``reuse`` field ("cache": replay the deep feature, "forecast": extrapolate it from the last full
steps, "zeros": the ablation).

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

import torch

from .acts import act_for
from .config import DeepCacheConfig
from .core import Group, Session
from .policy import policy_for
from .schedule import ranges
from .unets import BranchPlan, branch_plan


class DeepCacheEngine(Session):
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
        self.config, self.plan = config, branch_plan(unet, config.branch)
        super().__init__(unet, self._groups_for(unet, config), _act(config), pipeline, track_change)

    @property
    def unet(self) -> torch.nn.Module:
        return self.model

    def _groups_for(self, unet: torch.nn.Module, config: DeepCacheConfig) -> list[Group]:
        """One group, or with per-phase cuts one per branch, the deepest first: a cached step cut at c
        skips the groups of branches >= c (a module in several groups follows the deepest) and runs
        the rest, above the deep feature of c."""
        return [Group(branch_plan(unet, b).roles, policy_for(config, b)) for b in config.branches]

    def configure(self, config: DeepCacheConfig) -> DeepCacheEngine:
        """Set a new config (re-installing the hooks if enabled); raises on an invalid branch."""
        plan, groups = branch_plan(self.unet, config.branch), self._groups_for(self.unet, config)
        was_enabled = self.enabled
        if was_enabled:
            self.disable()
        self.config, self.plan = config, plan
        self._set_plan(groups, _act(config))
        if was_enabled:
            self.enable()
        return self

    def describe(self, num_steps: int | None = None) -> str:
        """A human-readable plan: the branch, the deep modules, the producer of the cached feature
        and, given a run length and a static schedule, the full steps."""
        p: BranchPlan = self.plan
        lines = [
            f"{type(self.unet).__name__}: branch {p.branch} (paper branch {p.branch + 1}) "
            f"of 0..{p.num_branches - 1}",
            f"cached feature: output of {p.producer}",
            "skipped on cached steps: " + ", ".join(p.deep),
        ]
        if num_steps is not None and not self.config.adaptive:
            full = self.config.full_steps_for(num_steps)
            lines.append(f"full steps ({len(full)} of {num_steps}): {ranges(full)}")
            cut = self.config.cut_rule(num_steps)
            for b in self.config.branches if self.config.phases else ():
                steps = [s for s in range(num_steps) if s not in full and cut(s) == b]
                lines.append(f"cached steps cut at branch {b}: {ranges(steps)}")
            if self.config.refresh is False:
                lines.append("each cut's deep feature is kept from full steps only")
        return "\n".join(lines)


def _act(config: DeepCacheConfig):
    return act_for(config.reuse, config.order, config.time, config.fallback)
