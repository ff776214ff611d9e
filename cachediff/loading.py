"""Loading a preset's pipeline and choosing its scheduler, with one-line errors for what a user can
get wrong: no weights, a folder missing a component, truncated weights, another model's weights, a
scheduler the pipeline cannot step, a misspelt scheduler option.

Example:
    >>> guidance("assets/tiny-sd", 7.5)
    {'guidance_scale': 7.5}
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import diffusers
import safetensors
import torch

from . import stepping
from .files import require_weights
from .modules import denoiser
from .pipelines import Preset


def load_pipeline(preset: Preset, model: str | None = None, device: str = "cpu", dtype=torch.float32):
    """Load the preset's pipeline from a hub id or local folder, with a clear error if missing."""
    path = preset.model_path(model)
    require_weights(path)
    absent = _missing_folders(path)
    if absent:
        raise FileNotFoundError(
            f"{path!r} has no {', '.join(f'{k}/' for k in absent)} folder, which its model_index.json lists"
        )
    try:
        cls = getattr(diffusers, preset.pipeline)
        pipe = cls.from_pretrained(path, torch_dtype=dtype, **_absent_components(path))
    except OSError as err:
        broken = unreadable_weights(path)
        if broken:
            file, why = broken
            raise ValueError(f"{file!r} is not a readable weights file ({why}): truncated?") from None
        raise FileNotFoundError(
            f"could not load {path!r}: {err}\n"
            "Give --model a local folder with the weights (no download here)."
        ) from err
    needed = NEEDED_COMPONENTS.get(preset.pipeline, ())
    optional = (set(cls._optional_components) | {"safety_checker", "feature_extractor"}) - set(needed)
    missing = [k for k, v in pipe.components.items() if v is None and k not in optional]
    saved = _saved_class(path)
    if missing:
        raise ValueError(
            f"{path!r} is not a {preset.pipeline} folder: it has no {', '.join(missing)}"
            + (f" (it holds a {saved})" if saved else "")
        )
    if saved and ("XL" in saved) != ("XL" in preset.pipeline):  # SDXL weights for SD: U-Nets differ
        raise ValueError(f"{path!r} holds a {saved}, which a {preset.pipeline} cannot run")
    text_conditioned = "encoder_hidden_states" in inspect.signature(denoiser(pipe).forward).parameters
    if preset.task == "unconditional" and text_conditioned:
        raise ValueError(
            f"{path!r} holds a text-conditioned {saved or type(denoiser(pipe)).__name__}, which the "
            f"unconditional {preset.pipeline} cannot run; choose its model type (such as tiny-sd or sd1.5)"
        )
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)


_SDXL_TEXT = ("tokenizer_2", "text_encoder_2")  # optional to diffusers, needed to run from a prompt

#: Components that a pipeline class calls optional but that the preset's task needs (beside these,
#: a safety checker and its feature extractor may be absent from any pipeline, as diffusers allows).
NEEDED_COMPONENTS = {
    "StableDiffusionXLPipeline": _SDXL_TEXT,
    "StableDiffusionXLImg2ImgPipeline": _SDXL_TEXT,
    "StableDiffusionXLInpaintPipeline": _SDXL_TEXT,
}


def unreadable_weights(path: str) -> tuple[str, str] | None:
    """The first ``.safetensors`` file under a local folder whose header does not read (a truncated
    or corrupt download), and why; ``None`` if all read (or ``path`` is no folder)."""
    for file in sorted(Path(path).glob("**/*.safetensors")) if Path(path).is_dir() else ():
        try:
            with safetensors.safe_open(file, "pt"):
                pass
        except (safetensors.SafetensorError, OSError) as err:
            return str(file), str(err).removeprefix("Error while deserializing header: ")
    return None


def _saved_class(path: str) -> str | None:
    """The pipeline class a local folder's ``model_index.json`` names, if any."""
    index = Path(path) / "model_index.json"
    return json.loads(index.read_text()).get("_class_name") if index.exists() else None


def set_scheduler(
    pipe, name: str | None, spacing: str | None = None, options: Sequence[str] = (), follow: bool = False
) -> None:
    """Swap in the diffusers scheduler class ``name`` (same config), or keep the pipeline's if None;
    with ``spacing``, set its timestep spacing (``leading``, ``trailing`` or ``linspace``); with
    ``options``, set ``KEY=VALUE`` config entries (``scheduler_options``); with ``follow``, make DDIM or
    PLMS step to the run's next timestep (``cachediff.stepping.follow_timesteps``).

    Example:
        >>> from diffusers import DDIMPipeline, DDPMScheduler
        >>> pipe = DDIMPipeline(unet=None, scheduler=DDPMScheduler())
        >>> set_scheduler(pipe, "DDIMScheduler", "trailing", ["steps_offset=1"], follow=True)
        >>> s = pipe.scheduler
        >>> type(s).__name__, s.config.timestep_spacing, s.config.steps_offset, stepping.mode(s)
        ('DDIMScheduler', 'trailing', 1, 'follow')
    """
    scheduler = pipe.scheduler
    if name is not None or spacing is not None or options:
        cls = type(scheduler) if name is None else _checked_scheduler(pipe, name)
        # changes go in as keywords: from_config drops the keys its ``_use_default_values`` lists
        spaced = {} if spacing is None else dict(timestep_spacing=spacing)
        scheduler = cls.from_config(scheduler.config, **spaced)
        if options:
            scheduler = cls.from_config(scheduler.config, **scheduler_options(scheduler, list(options)))
    pipe.scheduler = stepping.follow_timesteps(scheduler) if follow else scheduler


def _checked_scheduler(pipe, name: str):
    """The diffusers scheduler class ``name``, if ``pipe`` can step it; else a one-line error."""
    cls = getattr(diffusers, name, None)
    if cls is None or not name.endswith("Scheduler"):
        raise ValueError(f"unknown scheduler {name!r}; give a diffusers class such as DDIMScheduler")
    passed = STEP_KWARGS.get(type(pipe).__name__, ())
    step = inspect.signature(cls.step).parameters if callable(getattr(cls, "step", None)) else {}
    needed = [
        k for k, p in list(step.items())[4:] if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    if needed:  # e.g. KarrasVeScheduler.step(model_output, sigma_hat, sigma_prev, sample_hat)
        raise ValueError(
            f"{name}.step needs {', '.join(needed)}, which diffusers pipelines do not pass; give a "
            "scheduler that steps (model_output, timestep, sample), such as DDIMScheduler"
        )
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in step.values())
    missing = [k for k in passed if k not in step and not takes_any]
    if missing:
        raise ValueError(
            f"{type(pipe).__name__} passes {', '.join(missing)} to scheduler.step, which {name}.step "
            "does not take; give a scheduler that does, such as DDIMScheduler"
        )
    return cls


def scheduler_options(scheduler, options: list[str]) -> dict:
    """``KEY=VALUE`` entries of ``scheduler``'s config, checked: the key must be one its class takes,
    the value JSON (``true``, ``0.5``, ``"text"``) or, for a key whose value is text, bare text.

    Example:
        >>> from diffusers import DDIMScheduler
        >>> scheduler_options(DDIMScheduler(), ["clip_sample=false", "timestep_spacing=trailing"])
        {'clip_sample': False, 'timestep_spacing': 'trailing'}
        >>> scheduler_options(DDIMScheduler(), ["clip_sampel=false"])
        Traceback (most recent call last):
        ...
        ValueError: DDIMScheduler has no config entry 'clip_sampel' (did you mean clip_sample?)
        >>> scheduler_options(DDIMScheduler(), ["clip_sample=yes"])
        Traceback (most recent call last):
        ...
        ValueError: clip_sample=yes: the value must be JSON, such as true, 0.5 or "text"
    """
    known = set(inspect.signature(type(scheduler).__init__).parameters) - {"self", "kwargs"}
    parsed = {}
    for option in options:
        key, _, value = option.partition("=")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{type(scheduler).__name__} has no config entry {key!r}{hint}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            if not isinstance(scheduler.config.get(key), str):
                raise ValueError(f'{option}: the value must be JSON, such as true, 0.5 or "text"') from None
            parsed[key] = value
    return parsed


#: Keyword arguments a pipeline passes to ``scheduler.step`` beyond the output, timestep and sample.
STEP_KWARGS = {"DDIMPipeline": ("eta", "use_clipped_model_output")}


def model_card(path: str) -> dict:
    """What a model folder says about its use in ``prompts.json`` (the tiny SD's: ``guidance_scale``,
    ``steps``, ``classes``, ``templates``), or nothing."""
    card = Path(path) / "prompts.json"
    return json.loads(card.read_text()) if card.is_file() else {}


def guidance(path: str, scale: float | None = None) -> dict:
    """The guidance input of a text task: ``scale`` if given, else the model card's
    ``guidance_scale``, else none (the pipeline's default)."""
    scale = model_card(path).get("guidance_scale") if scale is None else scale
    return {} if scale is None else dict(guidance_scale=scale)


def _missing_folders(path: str) -> list[str]:
    """Components that a local folder's ``model_index.json`` lists but whose folder is missing."""
    index = Path(path) / "model_index.json"
    if not index.exists():
        return []
    entries = json.loads(index.read_text()).items()
    listed = [k for k, v in entries if isinstance(v, list) and v and v[0] is not None]
    return [k for k in listed if not (Path(path) / k).is_dir()]


def _absent_components(path: str) -> dict:
    """Components a local folder saved as absent (``[null, null]``, e.g. no safety checker), passed as
    ``None`` so pipelines loaded under another class (Text2Video-Zero from SD weights) accept them."""
    index = Path(path) / "model_index.json"
    if not index.exists():
        return {}
    entries = json.loads(index.read_text()).items()
    return {k: None for k, v in entries if isinstance(v, list) and v and v[0] is None}
