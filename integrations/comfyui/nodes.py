"""The "DeepCache (cachediff)" node: MODEL -> MODEL, DeepCache on ComfyUI's own sampler.

The node validates its options against the model, then returns a *clone* of the model patcher that
carries one sampler wrapper (``comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE``); nothing of
ComfyUI is replaced, and the model given to the node stays as it was. Each sampling of the patched
model (every KSampler run: base and refiner, a hires pass with denoise < 1, every queue run) is a
fresh DeepCache run: the wrapper enables a new ``cachediff.DeepCacheEngine`` on the model's
``diffusion_model`` for that sampling only and removes it afterwards.

Steps are counted as cachediff counts a k-diffusion sampler's (``cachediff.sampling_run``): the
run's step times are the model's timesteps at the sampler's sigmas, each call is placed by its
timestep, and a step's second evaluation (Heun, DPM2, DPM++ SDE: at the next step's sigma or
between) belongs to *its* step, which the sampler's name tells (a sigma alone cannot); with
``count="evaluations"`` every evaluation is a step of its own. Cond and uncond, batched or in
separate calls, keep features of their own. A sampler whose evaluation
pattern cachediff does not know runs uncached, with a warning.
"""

from __future__ import annotations

import logging

import cachediff
from cachediff.sampling import SAMPLERS, evaluations_of
from cachediff.unets import SPECS, SequentialSpec, branch_plan

#: The node's schedule choices -> cachediff's schedule names.
SCHEDULES = ("uniform", "non-uniform", "adaptive")
#: The node's act choices -> ``DeepCacheConfig`` fields (the forecast's order is the node's own input).
ACTS = {
    "replay": dict(reuse="cache"),
    "forecast": dict(reuse="forecast"),
    "forecast (shallow fit)": dict(reuse="forecast", time="shallow"),
    "forecast (anchored fit)": dict(reuse="forecast", time="anchored"),
}
#: What the schedule counts: the sampler's steps, or its model evaluations (``cachediff.sampling_run``).
COUNTS = {"steps": "step", "evaluations": "evaluation"}
#: The sampler wrapper's key on the model patcher (one DeepCache per model: a later node replaces it).
KEY = "cachediff.deepcache"

log = logging.getLogger("cachediff")


def configure(
    diffusion_model,
    interval: int,
    branch: int,
    schedule: str = "uniform",
    act: str = "replay",
    forecast_order: int = 2,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
) -> cachediff.DeepCacheConfig:
    """The engine's configuration for the node's options, checked against ``diffusion_model``: a
    ``ValueError`` (shown by ComfyUI) for an option out of range or a model DeepCache cannot cut.

    Example:
        >>> configure(None, interval=0, branch=0)
        Traceback (most recent call last):
        ...
        ValueError: DeepCache (cachediff): interval must be an integer >= 1 (1 = no caching), got 0
    """
    try:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if act not in ACTS:
            raise ValueError(f"act must be one of {', '.join(ACTS)}, got {act!r}")
        if not 0.0 <= start_percent < end_percent <= 1.0:
            raise ValueError(
                f"start_percent and end_percent must satisfy 0 <= start < end <= 1, got {start_percent}, "
                f"{end_percent}"
            )
        forecast = dict(order=forecast_order) if ACTS[act]["reuse"] == "forecast" else {}
        window = (
            None if (start_percent, end_percent) == (0.0, 1.0) else (float(start_percent), float(end_percent))
        )
        config = cachediff.DeepCacheConfig(
            interval=interval, branch=branch, schedule=schedule, window=window, **ACTS[act], **forecast
        )
        if diffusion_model is not None:
            _check_model(diffusion_model, branch)
    except (TypeError, ValueError) as err:
        raise ValueError(f"DeepCache (cachediff): {err}") from None
    return config


def _check_model(diffusion_model, branch: int) -> None:
    """A ``TypeError`` naming what the node supports for any model but ComfyUI's U-Net, and
    cachediff's branch range error for a branch beyond it."""
    cls = type(diffusion_model)
    spec = SPECS.get(f"{cls.__module__}.{cls.__name__}")  # ComfyUI's U-Net, as cachediff cuts it
    if not (isinstance(spec, SequentialSpec) and spec.layers):
        raise TypeError(
            f"this model's diffusion model is a {cls.__name__}; DeepCache cuts U-Nets with skip branches: "
            "ComfyUI's UNetModel (SD 1.x, SD 2.x, SDXL and their fine-tunes)"
        )
    branch_plan(diffusion_model, branch)


class Sampling:
    """The sampler wrapper: DeepCache on ``diffusion_model`` for one sampling (``SAMPLER_SAMPLE``:
    ``executor.class_obj`` is the sampler, the arguments are the guider and the sigmas first)."""

    def __init__(self, config: cachediff.DeepCacheConfig, count: str = "steps"):
        self.config, self.unit = config, COUNTS[count]
        self.last = None  # the last sampling's engine (its ``stats``), for tests and the curious

    def __call__(self, executor, guider, sigmas, *args, **kwargs):
        function = getattr(executor.class_obj, "sampler_function", executor.class_obj)
        sampler = getattr(function, "__name__", type(function).__name__)
        try:
            evaluations_of(sampler)
        except ValueError:
            log.warning(
                "DeepCache (cachediff): sampler %s has an evaluation pattern cachediff does not know; "
                "it runs uncached (known: %s)",
                sampler,
                ", ".join(name.removeprefix("sample_") for name in SAMPLERS),
            )
            return executor(guider, sigmas, *args, **kwargs)
        model = guider.inner_model
        times = model.model_sampling.timestep(sigmas[:-1])  # the last sigma is where the run ends
        levels = getattr(model.model_sampling, "sigmas", None)  # each discrete timestep's noise level
        with (
            cachediff.DeepCacheEngine(model.diffusion_model, self.config) as engine,
            cachediff.sampling_run(engine, times, sampler, self.unit, levels),
        ):
            self.last = engine
            return executor(guider, sigmas, *args, **kwargs)


class DeepCache:
    """ComfyUI node: DeepCache on a U-Net model (SD 1.x, SD 2.x, SDXL)."""

    CATEGORY = "model_patches/cachediff"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    DESCRIPTION = (
        "DeepCache (Ma, Fang, Wang, CVPR 2024) by cachediff: a full step runs the whole U-Net and keeps "
        "its deep feature; the next cached steps run only the shallow branch and reuse it. Steps are "
        "counted per sampler step (Heun's and DPM++ SDE's second evaluations in their own step) or, with "
        "count = evaluations, per model evaluation; cond and uncond are cached apart, and every sampling "
        "is a fresh run."
    )

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's name)
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "an SD 1.x, SD 2.x or SDXL-family U-Net model"}),
                "interval": (
                    "INT",
                    {
                        "default": 3,
                        "min": 1,
                        "max": 1000,
                        "tooltip": "one full step every N steps (1: no caching)",
                    },
                ),
                "branch": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 63,
                        "tooltip": "skip branch id: 0 is the shallowest, fastest (SD 1.x: 0..11, SDXL: 0..8)",
                    },
                ),
                "schedule": (
                    list(SCHEDULES),
                    {
                        "default": "uniform",
                        "tooltip": "where full steps go: every N-th; the paper's non-uniform schedule; or "
                        "adaptive, where the shallow feature drifts most (ceil(steps / N) full steps)",
                    },
                ),
                "act": (
                    list(ACTS),
                    {
                        "default": "replay",
                        "tooltip": "what a cached step uses: the last full step's feature (DeepCache), a "
                        "forecast through the last full steps' features in the timestep, or one whose "
                        "weights are fitted to the cached step's own shallow feature (anchored: and "
                        "reproduce its timestep)",
                    },
                ),
                "forecast_order": (
                    "INT",
                    {
                        "default": 2,
                        "min": 1,
                        "max": 4,
                        "tooltip": "forecast only: full steps it passes through",
                    },
                ),
                "count": (
                    list(COUNTS),
                    {
                        "default": "steps",
                        "tooltip": "what the interval counts: sampler steps (the paper's; every "
                        "evaluation of a full step is full) or model evaluations (Heun, DPM2, DPM++ SDE: "
                        "full evaluations spread over steps, closer to the uncached image at the same "
                        "cost in docs/COMFYUI.md)",
                    },
                ),
                "start_percent": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "cache from this fraction of the steps",
                    },
                ),
                "end_percent": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "cache until this fraction of the steps",
                    },
                ),
            }
        }

    def patch(self, model, count: str = "steps", **options):
        if count not in COUNTS:
            raise ValueError(
                f"DeepCache (cachediff): count must be one of {', '.join(COUNTS)}, got {count!r}"
            )
        config = configure(model.get_model_object("diffusion_model"), **options)
        from comfy.patcher_extension import WrappersMP

        patched = model.clone()
        patched.remove_wrappers_with_key(WrappersMP.SAMPLER_SAMPLE, KEY)
        patched.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, KEY, Sampling(config, count))
        return (patched,)


NODE_CLASS_MAPPINGS = {"CachediffDeepCache": DeepCache}
NODE_DISPLAY_NAME_MAPPINGS = {"CachediffDeepCache": "DeepCache (cachediff)"}
