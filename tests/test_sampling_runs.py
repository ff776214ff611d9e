"""Sampling runs without a diffusers scheduler (issue 16): the CompVis DDIM and PLMS samplers and
k-diffusion's samplers on a tiny CompVis ``UNetModel``. Per sampler: interval 1 is bit-exact, the deep
blocks run exactly on the schedule's full steps (every evaluation and call of those steps, no other),
cond/uncond calls keep caches of their own, a second sampling call is a fresh run, and a call that
fits no step runs in full (fail open)."""

from __future__ import annotations

import pytest
import torch
from helpers import Runs, reference_deepcache_by_time

import cachediff
from cachediff.compvis import (
    SCHEDULES,
    TINY,
    DiffusionModel,
    build_unet,
    ddim_times,
    example_inputs,
    randomised,
)
from cachediff.sampling import evaluations_of

pytest.importorskip("ldm.modules.diffusionmodules.openaimodel", reason="stable-diffusion-sdkit not installed")

STEPS, INTERVAL = 8, 3  # full steps 0, 3 and 6 of 8
#: Model evaluations per run, and of them those of the full steps (which run the deep blocks), written
#: out from each sampler's loop, not from the engine's table: one evaluation per step; two per step
#: but the last (an Euler step to sigma 0); CompVis PLMS evaluates its first step twice.
ONE, TWO = dict(calls=8, deep=3), dict(calls=2 * 7 + 1, deep=2 * 3)
EVALUATIONS = {"ddim": ONE, "plms": dict(calls=9, deep=2 + 1 + 1)}
EVALUATIONS |= dict.fromkeys(["sample_euler", "sample_euler_ancestral", "sample_dpmpp_2m"], ONE)
EVALUATIONS |= dict.fromkeys(
    [
        "sample_heun",
        "sample_dpm_2",
        "sample_dpmpp_sde",
        "sample_dpm_2_ancestral",
        "sample_dpmpp_2s_ancestral",
    ],
    TWO,
)


def tiny_model(seed: int = 0) -> tuple[DiffusionModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    unet = randomised(build_unet(TINY["sd-v1"]), std=0.05)
    inputs = example_inputs("sd-v1", batch=1, tiny=True)
    return (
        DiffusionModel(unet, *SCHEDULES["sd-v1"]),
        torch.randn_like(inputs["x"]),
        torch.randn_like(inputs["context"]),
    )


def deep_runs(unet) -> Runs:
    """Runs of the middle block's first layer (a skipped block calls none of its layers)."""
    return Runs(unet.middle_block[0])


# ----------------------------------------------------------------------------- CompVis samplers
def compvis_sample(ldm, x, context, sampler_name: str, seed: int = 0) -> torch.Tensor:
    from ldm.models.diffusion.ddim import DDIMSampler
    from ldm.models.diffusion.plms import PLMSSampler

    sampler = (DDIMSampler if sampler_name == "ddim" else PLMSSampler)(ldm)
    uncond = torch.zeros_like(context)
    torch.manual_seed(seed)
    with torch.no_grad():
        out, _ = sampler.sample(
            STEPS, 1, tuple(x.shape[1:]), conditioning=context, x_T=x, verbose=False, eta=0.0,
            unconditional_guidance_scale=3.0, unconditional_conditioning=uncond,
        )  # fmt: skip
    return out


@pytest.mark.parametrize("sampler", ["ddim", "plms"])
def test_compvis_samplers_follow_the_schedule(sampler):
    ldm, x, context = tiny_model()
    unet = ldm.model.diffusion_model
    base = compvis_sample(ldm, x, context, sampler)
    with (
        cachediff.deepcache(unet, interval=1) as engine,
        cachediff.sampling_run(engine, ddim_times(STEPS, ldm.num_timesteps), sampler),
    ):
        assert torch.equal(compvis_sample(ldm, x, context, sampler), base)
    with cachediff.deepcache(unet, interval=INTERVAL, branch=1) as engine:
        with (
            cachediff.sampling_run(engine, ddim_times(STEPS, ldm.num_timesteps), sampler),
            deep_runs(unet) as deep,
        ):
            first = compvis_sample(ldm, x, context, sampler)
            second = compvis_sample(ldm, x, context, sampler)  # a fresh run: the same images
    assert deep.count == 2 * EVALUATIONS[sampler]["deep"]  # two runs
    assert torch.equal(first, second) and not torch.equal(first, base)
    assert (first - base).abs().max() < 0.5 * base.abs().max()


def producer(unet, branch: int) -> str:
    """The module whose output is branch ``branch``'s deep feature, from the UNetModel's forward: output
    block n - 1 - b reads skip b, so the deep feature is what output block n - 2 - b hands it."""
    return f"output_blocks.{len(unet.input_blocks) - 2 - branch}"


def full_times(times) -> list[float]:
    return [times[s] for s in range(0, STEPS, INTERVAL)]


def test_compvis_ddim_hands_out_what_deepcache_by_its_definition_does():
    """The values, not only the counts: every cached call of the engine equals a call whose deep
    feature is the one the last full step kept (keyed by timestep, no cachediff code)."""
    ldm, x, context = tiny_model()
    unet, times = ldm.model.diffusion_model, ddim_times(STEPS, ldm.num_timesteps)
    with reference_deepcache_by_time(unet, producer(unet, 1), full_times(times)):
        expected = compvis_sample(ldm, x, context, "ddim")
    with cachediff.deepcache(unet, interval=INTERVAL, branch=1) as engine:
        with cachediff.sampling_run(engine, times, "ddim"):
            out = compvis_sample(ldm, x, context, "ddim")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, compvis_sample(ldm, x, context, "ddim"), rtol=1e-3, atol=1e-3)


def test_a_call_that_fits_no_step_runs_in_full_and_keeps_nothing():
    ldm, x, context = tiny_model()
    unet = ldm.model.diffusion_model
    times = ddim_times(STEPS, ldm.num_timesteps)
    with (
        cachediff.deepcache(unet, interval=INTERVAL, branch=1) as engine,
        cachediff.sampling_run(engine, times),
    ):
        with (
            torch.no_grad(),
            deep_runs(unet) as deep,
            pytest.warns(UserWarning, match="fits no step") as seen,
        ):
            unet(x, torch.tensor([times[0]]), context=context)  # step 0: full
            odd = unet(x, torch.tensor([times[0] - 7.0]), context=context)  # no step's time
            unet(x, torch.tensor([times[0] - 8.0]), context=context)  # none either: warned once
            unet(x, torch.tensor([times[1]]), context=context)  # step 1: cached
        assert len([w for w in seen if "fits no step" in str(w.message)]) == 1
        assert deep.count == 3 and engine.stats.pattern == "FFFC"
    with torch.no_grad():
        assert torch.equal(odd, unet(x, torch.tensor([times[0] - 7.0]), context=context))


def test_times_must_decrease_and_samplers_must_be_known():
    ldm, _, _ = tiny_model()
    engine = cachediff.engine_for(ldm.model.diffusion_model)
    with pytest.raises(ValueError, match="decreasing"):
        cachediff.sampling_run(engine, [1.0, 5.0]).__enter__()
    with pytest.raises(ValueError, match="unknown sampler 'sample_magic'.*sample_heun.*one, two, plms"):
        evaluations_of("sample_magic")


# ----------------------------------------------------------------------------- k-diffusion
K_SAMPLERS = ["sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpm_2", "sample_dpmpp_2m",
              "sample_dpmpp_sde", "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral"]  # fmt: skip


def k_sample(
    K, denoiser, x, context, sampler: str, sigmas, separate: bool, seed: int = 0, **options
) -> torch.Tensor:
    """Sampling with classifier-free guidance (scale 3) as the UIs do it: cond and uncond in one
    batch, or (``separate``) in two calls."""
    uncond = torch.zeros_like(context)

    def guided(x, sigma, cond):
        if separate:
            c, u = denoiser(x, sigma, cond=cond), denoiser(x, sigma, cond=uncond)
        else:
            c, u = denoiser(
                torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([cond, uncond])
            ).chunk(2)
        return u + 3.0 * (c - u)

    torch.manual_seed(seed)
    with torch.no_grad():
        return getattr(K.sampling, sampler)(
            guided, x * sigmas[0], sigmas, extra_args=dict(cond=context), disable=True, **options
        )


def k_diffusion():
    """k-diffusion, or a skip that says what its import lacks (in the pinned environment: skimage and
    torchvision, which requirements-latest.txt installs)."""
    try:
        import k_diffusion
    except ImportError as err:
        pytest.skip(f"k-diffusion does not import here: {err}")
    return k_diffusion


@pytest.mark.parametrize("separate", [False, True], ids=["batched", "separate"])
@pytest.mark.parametrize("sampler", K_SAMPLERS)
def test_k_diffusion_samplers_follow_the_schedule(sampler, separate):
    K = k_diffusion()
    ldm, x, context = tiny_model()
    unet = ldm.model.diffusion_model
    denoiser = K.external.CompVisDenoiser(ldm)
    sigmas = denoiser.get_sigmas(STEPS)
    base = k_sample(K, denoiser, x, context, sampler, sigmas, separate)
    with (
        cachediff.deepcache(unet, interval=1) as engine,
        cachediff.k_diffusion_run(engine, denoiser, sigmas, sampler),
    ):
        assert torch.equal(k_sample(K, denoiser, x, context, sampler, sigmas, separate), base)
    with cachediff.deepcache(unet, interval=INTERVAL, branch=1) as engine:
        with cachediff.k_diffusion_run(engine, denoiser, sigmas, sampler), deep_runs(unet) as deep:
            first = k_sample(K, denoiser, x, context, sampler, sigmas, separate)
            calls = len(engine.stats.calls)
            second = k_sample(K, denoiser, x, context, sampler, sigmas, separate)
    per_evaluation = 2 if separate else 1
    assert deep.count == 2 * per_evaluation * EVALUATIONS[sampler]["deep"]  # two runs
    assert calls == per_evaluation * EVALUATIONS[sampler]["calls"]
    assert torch.equal(first, second) and not torch.equal(first, base)
    assert (first - base).abs().max() < 0.5 * base.abs().max()


@pytest.mark.parametrize("separate", [False, True], ids=["batched", "separate"])
@pytest.mark.parametrize("sampler", ["sample_euler", "sample_euler_ancestral", "sample_dpmpp_2m"])
def test_k_diffusion_hands_out_what_deepcache_by_its_definition_does(sampler, separate):
    """As for CompVis DDIM, on k-diffusion's one-evaluation samplers: with separate cond and uncond
    calls, each keeps and reuses its own feature."""
    K = k_diffusion()
    ldm, x, context = tiny_model()
    unet = ldm.model.diffusion_model
    denoiser = K.external.CompVisDenoiser(ldm)
    sigmas = denoiser.get_sigmas(STEPS)
    times = [float(denoiser.sigma_to_t(s)) for s in sigmas[:-1]]
    with reference_deepcache_by_time(unet, producer(unet, 1), full_times(times)):
        expected = k_sample(K, denoiser, x, context, sampler, sigmas, separate)
    with cachediff.deepcache(unet, interval=INTERVAL, branch=1) as engine:
        with cachediff.k_diffusion_run(engine, denoiser, sigmas, sampler):
            out = k_sample(K, denoiser, x, context, sampler, sigmas, separate)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["sample_euler", "sample_heun"])
def test_separate_cond_and_uncond_calls_keep_caches_of_their_own(sampler):
    """Cached, two calls per evaluation give what one batched call gives (each call reuses its own
    feature; sharing one slot would hand the conditional call the unconditional feature)."""
    K = k_diffusion()
    ldm, x, context = tiny_model()
    denoiser = K.external.CompVisDenoiser(ldm)
    sigmas = denoiser.get_sigmas(STEPS)
    out = {}
    for separate in (False, True):
        with cachediff.deepcache(ldm.model.diffusion_model, interval=INTERVAL, branch=1) as engine:
            with cachediff.k_diffusion_run(engine, denoiser, sigmas, sampler):
                out[separate] = k_sample(K, denoiser, x, context, sampler, sigmas, separate)
    torch.testing.assert_close(out[True], out[False], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", ["sample_euler", "sample_heun"])
def test_churn_evaluates_off_the_step_times_and_runs_uncached_with_one_warning(sampler):
    """With ``s_churn > 0`` Euler and Heun evaluate at sigma_hat, no step's time: those calls run as
    the original model (fail open), and the user is told once (issue 31: it was silent). Euler's
    every call is such a call; Heun's second evaluations land on the next step's time and are
    scheduled as that step."""
    K = k_diffusion()
    ldm, x, context = tiny_model()
    unet = ldm.model.diffusion_model
    denoiser = K.external.CompVisDenoiser(ldm)
    sigmas = denoiser.get_sigmas(STEPS)
    churn = dict(s_churn=1.0)
    base = k_sample(K, denoiser, x, context, sampler, sigmas, False, **churn)
    with (
        cachediff.deepcache(unet, interval=INTERVAL, branch=1) as engine,
        cachediff.k_diffusion_run(engine, denoiser, sigmas, sampler),
        pytest.warns(UserWarning, match="s_churn") as seen,
    ):
        out = k_sample(K, denoiser, x, context, sampler, sigmas, False, **churn)
    assert len([w for w in seen if "s_churn" in str(w.message)]) == 1
    if sampler == "sample_euler":
        assert torch.equal(out, base) and engine.stats.n_cached == 0  # no call placed: none cached
    else:
        assert 0 < engine.stats.n_cached and (out - base).abs().max() < 0.5 * base.abs().max()


def test_a_k_diffusion_run_forecasts_in_sigma_from_the_denoisers_noise_levels():
    K = k_diffusion()
    ldm, x, context = tiny_model()
    unet = ldm.model.diffusion_model
    denoiser = K.external.CompVisDenoiser(ldm)
    sigmas = denoiser.get_sigmas(STEPS)
    outs = {}
    for time in ("timestep", "sigma"):
        with cachediff.deepcache(unet, interval=3, branch=1, reuse="forecast", time=time) as engine:
            with cachediff.k_diffusion_run(engine, denoiser, sigmas, "sample_euler"):
                assert engine.clock.sigmas() == pytest.approx(denoiser.sigmas.double().tolist(), rel=1e-6)
                outs[time] = k_sample(K, denoiser, x, context, "sample_euler", sigmas, False)
        assert engine.stats.n_cached > 0
    assert torch.isfinite(outs["sigma"]).all() and not torch.equal(outs["sigma"], outs["timestep"])
