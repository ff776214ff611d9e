"""DDIM and PLMS that step to the run's next timestep, whatever its spacing.

diffusers' ``DDIMScheduler`` and ``PNDMScheduler`` (PLMS) step from timestep ``t`` to
``t - num_train_timesteps // n``. With ``timestep_spacing="trailing"`` or ``"linspace"`` the run's
timesteps are not that far apart unless ``n`` divides ``num_train_timesteps``: 24 trailing steps of
1000 are 41 or 42 apart, so two steps in three land on ``t - 41`` while the next call reads the latent
as if it were at ``t - 42``. On the tiny SD that costs PLMS 24 steps 4.8 dB of fidelity to the
converged solution (docs/PLANNING.md), more than the step it saves. ``follow_timesteps`` makes each step
land on the run's next timestep (the last one on the final alpha), as ``DDPMScheduler.previous_timestep``
does; where ``n`` divides ``num_train_timesteps`` (and with leading spacing) nothing changes, bit for bit.

Example:
    >>> import torch
    >>> from diffusers import DDIMScheduler
    >>> s = follow_timesteps(DDIMScheduler(timestep_spacing="trailing", clip_sample=False))
    >>> s.set_timesteps(24)
    >>> x, eps = torch.zeros(1), torch.ones(1)  # a latent at t = 999 whose noise prediction is 1
    >>> a = s.alphas_cumprod
    >>> x0 = -((1 / a[999] - 1) ** 0.5)  # DDIM's clean estimate, then its latent at 957 (not 958)
    >>> bool(torch.allclose(s.step(eps, 999, x).prev_sample, a[957] ** 0.5 * x0 + (1 - a[957]) ** 0.5))
    True
"""

from __future__ import annotations

from diffusers import DDIMScheduler, PNDMScheduler


def follow_timesteps(scheduler):
    """Make ``scheduler`` (DDIM or PLMS) step to its run's next timestep; returns it (changed in place).
    Apply it before an accelerator is attached: ``from_config`` copies step by the stride again."""
    if isinstance(scheduler, PNDMScheduler):
        scheduler._get_prev_sample = _pndm_prev_sample.__get__(scheduler)
    elif isinstance(scheduler, DDIMScheduler):
        scheduler.step = _ddim_step.__get__(scheduler)
    else:
        raise ValueError(
            f"{type(scheduler).__name__} steps along its own timesteps already; only DDIM and PLMS need "
            "to be made to follow them (--follow-timesteps)"
        )
    return scheduler


def mode(scheduler) -> str | None:
    """How a DDIM or PLMS ``scheduler`` steps: ``"follow"`` (``follow_timesteps``) or diffusers'
    ``"stride"``; ``None`` for the other schedulers, which step along their timesteps already.

    Example:
        >>> from diffusers import EulerDiscreteScheduler, PNDMScheduler
        >>> [mode(PNDMScheduler()), mode(follow_timesteps(PNDMScheduler())), mode(EulerDiscreteScheduler())]
        ['stride', 'follow', None]
    """
    if not isinstance(scheduler, (DDIMScheduler, PNDMScheduler)):
        return None
    return "follow" if {"step", "_get_prev_sample"} & vars(scheduler).keys() else "stride"


def visited(scheduler) -> list[int]:
    """The distinct timesteps of the run, first to last (PLMS repeats one in its warm-up)."""
    return sorted({int(s) for s in scheduler.timesteps}, reverse=True)


def next_timestep(scheduler, t: int) -> int:
    """The timestep the run visits after ``t`` (-1 after its last: the final alpha)."""
    ts = visited(scheduler)
    i = ts.index(int(t))
    return ts[i + 1] if i + 1 < len(ts) else -1


def _pndm_prev_sample(self, sample, timestep, prev_timestep, model_output):
    # PLMS's second call (its warm-up) passes prev_timestep = the current t and timestep = t + stride:
    # the latent it steps from is at the run's first timestep, the one before prev_timestep.
    ts = visited(self)
    if int(timestep) in ts:
        prev_timestep = next_timestep(self, timestep)
    else:
        timestep = ts[ts.index(int(prev_timestep)) - 1]
    return PNDMScheduler._get_prev_sample(self, sample, timestep, prev_timestep, model_output)


def _ddim_step(self, model_output, timestep, sample, *args, **kwargs):
    # DDIMScheduler.step reads alphas_cumprod at its own t - stride: show it the next timestep's alpha there.
    stride_prev = int(timestep) - self.config.num_train_timesteps // self.num_inference_steps
    prev = next_timestep(self, timestep)
    if stride_prev < 0 or stride_prev == prev:
        return DDIMScheduler.step(self, model_output, timestep, sample, *args, **kwargs)
    alphas = self.alphas_cumprod
    self.alphas_cumprod = alphas.clone()
    self.alphas_cumprod[stride_prev] = alphas[prev] if prev >= 0 else self.final_alpha_cumprod
    try:
        return DDIMScheduler.step(self, model_output, timestep, sample, *args, **kwargs)
    finally:
        self.alphas_cumprod = alphas
