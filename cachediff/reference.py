"""The converged solution of a sampling run's ODE from the same noise: fidelity's second reference.

PSNR to the uncached run the user asked for says how much an acceleration changes *that* run; it
cannot compare runs of different step counts, each of which has its own error. Their common
reference is the solution the sampler approximates: the probability-flow ODE of the same model
(with the same prompts and guidance) solved from the same initial noise by a fine solver. With SD
1.5's ``leading`` spacing a run of n steps starts at t = 1 + (n - 1) * floor(1000 / n), so fewer-step
runs start elsewhere; the fine solve uses ``trailing`` spacing, which starts every step count at
t = 999, as every run should that is compared with it (docs/PLANNING.md).

The fine solver is DPM-Solver++ 2M (``DPMSolverMultistepScheduler``) with trailing spacing; for a
pipeline that passes DDIM's ``eta`` to ``scheduler.step`` (``DDIMPipeline``) it is DDIM with
trailing spacing. Its samples live in a sweep folder of their own (resumable, by seed), and
``Converged.gap`` measures how far it is from converged: its PSNR to a solve with twice the steps on
a few seeds, in floating point.

Example:
    >>> from diffusers import DDIMPipeline, DDIMScheduler
    >>> fine_scheduler(DDIMPipeline(unet=None, scheduler=DDIMScheduler())).config.timestep_spacing
    'trailing'
"""

from __future__ import annotations

import inspect
from pathlib import Path

import diffusers
import torch

from .files import read_json, write_json
from .loading import STEP_KWARGS
from .metrics import psnr
from .rows import Setting
from .sweep import Sweep

#: The fine solver: a scheduler class and the options it gets on top of the pipeline's config.
FINE = ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2))
#: For pipelines that pass DDIM's ``eta`` to ``scheduler.step``.
FINE_DDIM = ("DDIMScheduler", dict())
#: The fine solver's default steps: DPM-Solver++ 2M is 72.7 dB from its 400-step solve at 200 steps on
#: the tiny SD; first-order DDIM needs every training timestep.
DEFAULT_STEPS = {"DPMSolverMultistepScheduler": 200, "DDIMScheduler": 1000}
#: Its names in labels and folder names.
NAMES = {"DPMSolverMultistepScheduler": ("DPM-Solver++ 2M", "dpmpp2m"), "DDIMScheduler": ("DDIM", "ddim")}


def fine_scheduler(pipe):
    """The fine solver's scheduler for ``pipe``: its config (betas, prediction type, clipping) with the
    fine solver's class, options and trailing spacing."""
    name, options = FINE_DDIM if type(pipe).__name__ in STEP_KWARGS else FINE
    cls = getattr(diffusers, name)
    return cls.from_config(pipe.scheduler.config, timestep_spacing="trailing", **options)


def fine_pipeline(pipe):
    """A pipeline of ``pipe``'s class that shares its modules and steps with the fine solver."""
    options = {**pipe.components, "scheduler": fine_scheduler(pipe)}
    if "requires_safety_checker" in inspect.signature(type(pipe).__init__).parameters:
        options["requires_safety_checker"] = pipe.config.get("requires_safety_checker", False)
    fine = type(pipe)(**options)
    fine.set_progress_bar_config(disable=True)
    return fine


class Converged:
    """The converged solutions of ``images`` seeds from ``first_seed``, sampled as a sweep would
    sample them (``task``, ``prompts``, ``inputs``: the sweep's) by the fine solver over ``steps``
    steps, stored under ``<out>/converged-<solver>-trailing-<steps>``.

    Args:
        pipe: the sweep's pipeline (its modules are shared, its scheduler's config reused).
        out: the sweep folder.
        images: seeds ``first_seed .. first_seed + images - 1``.
        steps: the fine solver's steps (``None``: its ``DEFAULT_STEPS``).
        shard, task, prompts, batch, inputs: as ``Sweep`` takes them.
    """

    def __init__(self, pipe, out: Path, images: int, steps: int | None, shard: int, task: str, prompts=None,
                 batch: int | None = None, first_seed: int = 0, **inputs):  # fmt: skip
        fine = fine_pipeline(pipe)
        steps = steps or DEFAULT_STEPS[type(fine.scheduler).__name__]
        most = fine.scheduler.config.num_train_timesteps
        if isinstance(fine.scheduler, diffusers.DDIMScheduler) and most % steps:
            raise ValueError(
                f"the converged DDIM solve steps by {most} // steps, which misses trailing timesteps "
                f"unless the steps divide {most}: give --converged-steps {most // 2} or {most}, not {steps}"
            )
        name, short = NAMES[type(fine.scheduler).__name__]
        self.label = f"{name}, trailing, {steps} steps"
        self.setting = Setting(f"{short}-trailing-{steps}", steps)
        folder = Path(out) / f"converged-{short}-trailing"
        self.sweep = Sweep(fine, folder, images, shard, None, task, prompts, batch, first_seed, **inputs)

    def describe(self) -> str:
        """The reference and how far it is from converged, e.g. ``DPM-Solver++ 2M, trailing, 200 steps
        (74.1 dB to 400 steps)``."""
        gap = self.gap()
        return f"{self.label} ({gap['psnr_db']:.1f} dB to {gap['check_steps']} steps)"

    def images(self, k: int) -> torch.Tensor:
        """The first ``k`` converged images in [-1, 1], generated where missing."""
        if k > self.sweep.n:
            raise ValueError(f"the converged reference holds {self.sweep.n} images, not {k}")
        return self.sweep.first(self.setting, k)

    def gap(self, seeds: int = 4) -> dict:
        """How converged the reference is: PSNR in dB (floating point, no 8-bit rounding) of its solve
        to one of twice the steps (half, where twice would exceed the training timesteps or, for DDIM,
        not divide them), on the first ``seeds`` seeds; measured once, kept in ``convergence.json``
        beside the samples."""
        path = self.sweep.out / f"convergence-{self.setting.name}.json"
        if path.exists():
            return read_json(path)
        steps, most = self.setting.steps, self.sweep.pipe.scheduler.config.num_train_timesteps
        ddim = isinstance(self.sweep.pipe.scheduler, diffusers.DDIMScheduler)
        check = 2 * steps if 2 * steps <= most and not (ddim and most % (2 * steps)) else steps // 2
        finer = Setting(f"{self.setting.name}-check-{check}", check)
        first = range(self.sweep.first_seed, self.sweep.first_seed + seeds)
        fine, finest = (self.sweep.generate(s, first) for s in (self.setting, finer))
        record = dict(reference=self.label, check_steps=finer.steps, seeds=seeds, psnr_db=psnr(fine, finest))
        write_json(path, record)
        return record
