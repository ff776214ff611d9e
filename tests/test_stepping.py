"""DDIM and PLMS stepping to the run's next timestep (``cachediff.stepping``): exact where diffusers'
stride is right, every step landing on the next visited timestep where it is not."""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

from cachediff.stepping import follow_timesteps, next_timestep, visited

SCHEDULERS = {
    "ddim": lambda spacing: DDIMScheduler(timestep_spacing=spacing, clip_sample=False),
    "plms": lambda spacing: PNDMScheduler(timestep_spacing=spacing, skip_prk_steps=True),
}


def _sample(scheduler, steps: int) -> torch.Tensor:
    """A full run on a fixed noise with a smooth stand-in for the model's noise prediction."""
    scheduler.set_timesteps(steps)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        x = scheduler.step(0.3 * x + 0.01 * torch.sin(t.float() / 100), t, x).prev_sample
    return x


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("spacing, steps", [("trailing", 25), ("trailing", 50), ("leading", 24)])
def test_where_the_stride_is_right_nothing_changes(name, spacing, steps):
    plain = _sample(SCHEDULERS[name](spacing), steps)
    assert torch.equal(_sample(follow_timesteps(SCHEDULERS[name](spacing)), steps), plain)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_step_lands_on_the_next_visited_timestep(name, monkeypatch):
    """24 trailing steps are 41 or 42 apart; diffusers steps by 41 (the mutation: leave it unpatched)."""
    scheduler, got = follow_timesteps(SCHEDULERS[name]("trailing")), []  # (where a step lands, the next)
    if name == "plms":
        inner = PNDMScheduler._get_prev_sample

        def recording(s, x, t, prev, e):
            got.append((int(prev), next_timestep(s, t)))
            return inner(s, x, t, prev, e)

        monkeypatch.setattr(PNDMScheduler, "_get_prev_sample", recording)
    else:
        alphas, inner = scheduler.alphas_cumprod.clone(), DDIMScheduler.step

        def recording(s, e, t, x, *args, **kwargs):  # the alpha the step reads against the next one's
            stride = int(t) - s.config.num_train_timesteps // s.num_inference_steps
            nxt = next_timestep(s, t)
            read = s.alphas_cumprod[stride] if stride >= 0 else s.final_alpha_cumprod
            got.append((float(read), float(alphas[nxt] if nxt >= 0 else s.final_alpha_cumprod)))
            return inner(s, e, t, x, *args, **kwargs)

        monkeypatch.setattr(DDIMScheduler, "step", recording)
    out = _sample(scheduler, 24)
    ts = visited(scheduler)
    assert len(ts) == 24 and {a - b for a, b in itertools.pairwise(ts)} == {41, 42}
    assert len(got) == len(scheduler.timesteps) and all(a == b for a, b in got)
    monkeypatch.undo()
    assert not torch.equal(out, _sample(SCHEDULERS[name]("trailing"), 24))


def test_other_schedulers_are_refused():
    with pytest.raises(ValueError, match="only DDIM and PLMS"):
        follow_timesteps(EulerDiscreteScheduler())
