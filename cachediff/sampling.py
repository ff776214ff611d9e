"""Sampling runs without a diffusers scheduler: the CompVis DDIM / PLMS samplers and k-diffusion's.

Their loops call the model with no ``scheduler.step`` to count steps, and some call it twice per step
(Heun, DPM2, DPM++ SDE; PLMS on its first step). A *sampling run* gives the engine the run's step
times once; each model call is then placed in its step by its timestep argument
(``cachediff.clock.TimedRun``), cond/uncond calls of one evaluation get caches of their own, a call
at the first time again starts a fresh run, and a call that fits nowhere runs as the original model
and keeps nothing (fail open). Reading each call's timestep is one host synchronisation per call on
a GPU (a scalar).

Example (k-diffusion on a CompVis model, three lines around the usual sampling call)::

    denoiser = K.external.CompVisDenoiser(ldm_model)
    sigmas = denoiser.get_sigmas(50)
    with cachediff.deepcache(ldm_model.model.diffusion_model, interval=3, branch=0) as engine, \\
            cachediff.k_diffusion_run(engine, denoiser, sigmas, K.sampling.sample_heun):
        x = K.sampling.sample_heun(denoiser, x, sigmas, extra_args=extra)

    >>> sorted(EVALUATIONS), evaluations_of("sample_heun")(49, 50), evaluations_of("plms")(0, 50)
    (['one', 'plms', 'three', 'two'], 1, 2)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

#: Evaluations of step ``step`` of an ``n``-step run, by pattern.
EVALUATIONS: dict[str, Callable[[int, int], int]] = {
    "one": lambda step, n: 1,
    # a second evaluation per step, but on the last one, which goes to sigma 0 (an Euler step)
    "two": lambda step, n: 1 if step == n - 1 else 2,
    # the CompVis PLMS sampler's first step is a pseudo improved Euler step: two evaluations
    "plms": lambda step, n: 2 if step == 0 else 1,
    # three evaluations per step between its times (SEEDS-3), one on the last
    "three": lambda step, n: 1 if step == n - 1 else 3,
}

#: Samplers by name (k-diffusion's sampling functions; the CompVis samplers) -> evaluation pattern.
SAMPLERS = {
    "sample_euler": "one",
    "sample_euler_ancestral": "one",
    "sample_lms": "one",
    "sample_dpmpp_2m": "one",
    "sample_dpmpp_2m_sde": "one",
    "sample_dpmpp_3m_sde": "one",
    "sample_heun": "two",
    "sample_dpm_2": "two",
    "sample_dpmpp_sde": "two",
    # ancestral two-stage samplers: the second evaluation at the geometric mean of sigma and the
    # sigma they step down to (sigma_{i+1} itself at eta = 1); an Euler last step to sigma 0
    "sample_dpm_2_ancestral": "two",
    "sample_dpmpp_2s_ancestral": "two",
    "ddim": "one",
    "plms": "plms",
    # ComfyUI's copy of k-diffusion adds these (counted through its KSampler: tests/test_comfyui.py)
    **dict.fromkeys(
        (
            "sample_euler_cfg_pp",
            "sample_euler_ancestral_cfg_pp",
            "sample_dpmpp_2m_cfg_pp",
            "sample_dpmpp_2m_sde_gpu",
            "sample_dpmpp_2m_sde_heun",
            "sample_dpmpp_2m_sde_heun_gpu",
            "sample_dpmpp_3m_sde_gpu",
            "sample_ddpm",
            "sample_lcm",
            "sample_ipndm",
            "sample_ipndm_v",
            "sample_deis",
            "sample_res_multistep",
            "sample_res_multistep_cfg_pp",
            "sample_res_multistep_ancestral",
            "sample_res_multistep_ancestral_cfg_pp",
            "sample_gradient_estimation",
            "sample_gradient_estimation_cfg_pp",
            "sample_er_sde",
            "sample_sa_solver",
            "sample_unipc",
            "sample_unipc_bh2",
        ),
        "one",
    ),
    **dict.fromkeys(
        (
            "sample_dpmpp_sde_gpu",
            "sample_dpmpp_2s_ancestral_cfg_pp",
            "sample_seeds_2",
            "sample_sa_solver_pece",
        ),
        "two",
    ),
    "sample_seeds_3": "three",
}


def evaluations_of(sampler: str | Callable) -> Callable[[int, int], int]:
    """The evaluation pattern of a sampler: a ``SAMPLERS`` name, a sampling function with such a
    name, or an ``EVALUATIONS`` pattern; a ``ValueError`` listing them for anything else."""
    name = getattr(sampler, "__name__", sampler)
    pattern = SAMPLERS.get(name, name)
    if pattern not in EVALUATIONS:
        raise ValueError(
            f"unknown sampler {name!r}: known are {', '.join(SAMPLERS)}, or give the pattern of its model "
            f"evaluations per step: {', '.join(EVALUATIONS)}"
        )
    return EVALUATIONS[pattern]


@contextlib.contextmanager
def sampling_run(
    engine,
    times: Sequence[float] | torch.Tensor,
    sampler: str | Callable = "one",
    unit: str = "step",
    noise_levels: Sequence[float] | torch.Tensor | None = None,
):
    """Inside the block, ``engine``'s model calls are placed in the steps of a run whose step i
    first evaluates the model at timestep ``times[i]`` (descending, as the model receives them: the
    CompVis DDIM sampler's ``ddim_timesteps`` reversed); ``sampler`` says how many evaluations
    each step makes. The engine's schedule applies to the run's ``len(times)`` steps, or with
    ``unit="evaluation"`` to its evaluations, each its own step (full evaluations spread over a
    multi-evaluation sampler's steps; cond and uncond calls of one evaluation still share it).
    ``noise_levels``: sigma at each of the model's discrete timesteps 0, 1, ... (k-diffusion's
    ``denoiser.sigmas``), for a forecast in "sigma" or "lambda"."""
    times = times.tolist() if isinstance(times, torch.Tensor) else list(times)
    engine.clock.follow(times, evaluations_of(sampler), unit, noise_levels)
    try:
        yield engine
    finally:
        engine.clock.unfollow()


def k_diffusion_run(engine, denoiser, sigmas: torch.Tensor, sampler: str | Callable):
    """``sampling_run`` for a k-diffusion sampler: ``denoiser`` is the k-diffusion wrapper that
    turns sigmas into the model's timesteps (``CompVisDenoiser``, ``DiscreteEpsDDPMDenoiser``:
    ``sigma_to_t``), ``sigmas`` the run's (ending in 0, as k-diffusion's ``get_sigmas_*`` make them: a
    sampler's last step then evaluates once), ``sampler`` the sampling function or its name.

    Euler and Heun with ``s_churn > 0`` evaluate at a raised sigma_hat, no step's time: those calls
    run uncached (correct, not faster), with a warning once per sampling run (Heun's second
    evaluations, at the next step's time, are scheduled as that step)."""
    times = denoiser.sigma_to_t(sigmas[:-1])  # the last is where it ends
    return sampling_run(engine, times, sampler, noise_levels=getattr(denoiser, "sigmas", None))
