"""The converged reference (issue 26): the fine solver, its folder, its gap, and that fidelity to it
ranks step counts of one sampler as their error does, on the shipped tiny SD."""

from __future__ import annotations

from pathlib import Path

import diffusers
import pytest

from cachediff import metrics
from cachediff.generation import TASKS
from cachediff.reference import Converged, fine_pipeline, fine_scheduler
from cachediff.testing import tiny_unet

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a bag", "a photo of a coat"]


@pytest.fixture(scope="module")
def tiny_sd():
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(ROOT / "assets" / "tiny-sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_fine_solver_is_dpm_solver_2m_with_trailing_spacing_or_ddim_for_ddim_pipelines(tiny_sd, tmp_path):
    config = fine_scheduler(tiny_sd).config
    assert type(fine_scheduler(tiny_sd)).__name__ == "DPMSolverMultistepScheduler"
    assert (config.algorithm_type, config.solver_order, config.timestep_spacing) == (
        "dpmsolver++",
        2,
        "trailing",
    )
    assert config.beta_schedule == tiny_sd.scheduler.config.beta_schedule  # the model's noise schedule
    unet, _ = tiny_unet("ddpm")
    ddim = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(clip_sample=False))
    assert type(fine_scheduler(ddim)).__name__ == "DDIMScheduler"
    assert (
        fine_scheduler(ddim).config.timestep_spacing == "trailing"
        and not fine_scheduler(ddim).config.clip_sample
    )
    assert Converged(ddim, tmp_path, 1, None, 1, "unconditional").label == "DDIM, trailing, 1000 steps"
    with pytest.raises(ValueError, match="give --converged-steps 500 or 1000, not 300"):
        Converged(ddim, tmp_path, 1, 300, 1, "unconditional")  # DDIM's stride would miss its timesteps
    fine = fine_pipeline(tiny_sd)
    assert fine.unet is tiny_sd.unet and fine.scheduler is not tiny_sd.scheduler  # shared modules only


def test_fidelity_to_the_converged_solution_ranks_step_counts(tiny_sd, tmp_path):
    """DPM-Solver++ 2M with trailing spacing: 20 steps lie closer to the converged solve of the same
    noise than 8 steps, and the reference lies much closer to its own finer solve than either."""
    reference = Converged(tiny_sd, tmp_path, 2, 40, 2, "text2image", PROMPTS, guidance_scale=4.0)
    converged = reference.images(2)
    run = fine_pipeline(tiny_sd)
    psnr = {}
    for steps in (8, 20):
        images = TASKS["text2image"](run, [0, 1], steps, prompt=PROMPTS, guidance_scale=4.0)
        psnr[steps] = metrics.psnr(((images + 1) * 127.5).round() / 127.5 - 1, converged)  # 8-bit, as saved
    gap = reference.gap(seeds=2)
    assert psnr[20] > psnr[8] + 3 and gap["psnr_db"] > psnr[20] + 5, (psnr, gap)
    assert gap["check_steps"] == 80 and (tmp_path / "converged-dpmpp2m-trailing").is_dir()
    assert reference.describe().startswith("DPM-Solver++ 2M, trailing, 40 steps (")
    with pytest.raises(ValueError, match="holds 2 images, not 3"):
        reference.images(3)
