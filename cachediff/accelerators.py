"""Accelerators for a pipeline's denoiser, and their MACs per call.

Every accelerator is a ``cachediff.core.Session`` with one protocol: ``enable``, ``disable``,
``stats``, ``describe(num_steps)``; ``call_macs`` counts the MACs of its full and cached calls on
any of them, through ``Session.twin``. ``accelerator`` picks the one a pipeline needs: DeepCache on
a U-Net, the module cache of the middle transformer blocks on a DiT.

Example:
    >>> from cachediff.modules import every
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    >>> call_macs(ModuleCache(net, [CacheRule("1", every(1))]), dict(input=torch.ones(1, 4)))
    (112, 48)
"""

from __future__ import annotations

import torch

from .architectures import example_inputs
from .config import DeepCacheConfig
from .core import Session
from .engine import DeepCacheEngine
from .metrics.macs import count_macs
from .modules import CacheRule, ModuleCache, denoiser, middle_blocks

#: DiT blocks at each end that run on every step, unless a preset says otherwise.
SHALLOW_BLOCKS = 1


def accelerator(pipe, config: DeepCacheConfig, steps: int, shallow_blocks: int = SHALLOW_BLOCKS) -> Session:
    """DeepCache for the pipeline's denoiser: the engine on a U-Net (``config.branch`` is its skip
    branch); on a DiT (PixArt-alpha), the module cache of its middle transformer blocks, the first
    and last ``shallow_blocks`` running on every step, full steps from the static schedule for
    ``steps``."""
    if getattr(pipe, "unet", None) is not None:
        return DeepCacheEngine(pipe.unet, config, pipeline=pipe)
    model = denoiser(pipe)
    if config.branch or config.phases:
        raise ValueError(
            f"{type(model).__name__} is a transformer without skip branches (got branch {config.branch}"
            f"{', phases ' + str(config.phases) if config.phases else ''}); "
            "choose the blocks kept at each end with shallow_blocks"
        )
    if config.adaptive or config.reuse != "cache":
        raise ValueError(
            "transformer models take static schedules with reuse='cache' (adaptive needs a U-Net)"
        )
    full = frozenset(config.full_steps_for(steps))
    rule = CacheRule(middle_blocks(model, shallow_blocks), lambda step: step not in full, "residual")
    return ModuleCache(model, [rule], pipeline=pipe)


def call_macs(session: Session, inputs: dict | None = None, attention: bool = False) -> tuple[int, int]:
    """MACs of one full call and one cached call of the session's cut, with keyword ``inputs`` to its
    model. Without ``inputs``: of one denoiser call at batch 1, counted on a ``meta`` copy of the
    model (no compute), or on the model itself where its forward cannot run on ``meta`` (SVD's
    temporal mixer)."""
    if inputs is not None:
        return _count(session, session.model, inputs, attention)
    model = session.model
    try:
        with torch.device("meta"):
            shadow = type(model).from_config(model.config)
            return _count(session, shadow, example_inputs(shadow, batch=1), attention)
    except RuntimeError:
        device = next(model.parameters()).device
        inputs = torch.utils._pytree.tree_map(lambda t: t.to(device), example_inputs(model, batch=1))
        return _count(session, model, inputs, attention)


def _count(session: Session, model: torch.nn.Module, inputs: dict, attention: bool) -> tuple[int, int]:
    with session.twin(model):
        return count_macs(lambda: model(**inputs), attention), count_macs(lambda: model(**inputs), attention)
