"""Accelerators for a pipeline's denoiser, and their MACs per call.

Every accelerator is a ``cachediff.core.Session`` with one protocol: ``enable``, ``disable``,
``stats``, ``describe(num_steps)``; ``call_macs`` counts the MACs of its full and cached calls on
any of them, through ``Session.twin``. ``accelerator`` picks the one a pipeline needs: DeepCache on
a U-Net, the module cache of the middle transformer blocks on a DiT.

Example:
    >>> from cachediff.modules import CacheRule, every
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    >>> module_step_macs(net, dict(input=torch.ones(1, 4)), [CacheRule("1", every(1))])
    (112, 48)
"""

from __future__ import annotations

import dataclasses

import torch

from .architectures import example_inputs
from .config import DeepCacheConfig
from .core import Session
from .engine import DeepCacheEngine
from .metrics.macs import count_macs
from .modules import ModuleCache, denoiser, dit_rule

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
    if config.branch:
        raise ValueError(
            f"{type(model).__name__} is a transformer without skip branches (got branch {config.branch}); "
            "choose the blocks kept at each end with shallow_blocks"
        )
    if config.adaptive or config.reuse != "cache":
        raise ValueError(
            "transformer models take static schedules with reuse='cache' (adaptive needs a U-Net)"
        )
    full = frozenset(config.full_steps_for(steps))
    rule = dit_rule(model, config.interval, shallow_blocks)
    return ModuleCache(model, [dataclasses.replace(rule, reuse=lambda step: step not in full)], pipeline=pipe)


def call_macs(
    session: Session, inputs: dict, model: torch.nn.Module | None = None, attention: bool = False
) -> tuple[int, int]:
    """MACs of one full call and one cached call of the session's cut on ``model`` (default: the
    session's own) with keyword ``inputs``. Works on the ``meta`` device, where it costs no compute."""
    model = session.model if model is None else model
    with session.twin(model):
        return count_macs(lambda: model(**inputs), attention), count_macs(lambda: model(**inputs), attention)


def macs_per_call(session: Session) -> tuple[int, int]:
    """Full and cached MACs of one denoiser call (batch 1), counted on a ``meta`` copy (no compute),
    or on the model itself where its forward cannot run on ``meta`` (SVD's temporal mixer)."""
    model = session.model
    try:
        with torch.device("meta"):
            shadow = type(model).from_config(model.config)
            return call_macs(session, example_inputs(shadow, batch=1), shadow)
    except RuntimeError:
        device = next(model.parameters()).device
        inputs = torch.utils._pytree.tree_map(lambda t: t.to(device), example_inputs(model, batch=1))
        return call_macs(session, inputs)


def step_macs(unet: torch.nn.Module, inputs: dict, branch: int, attention: bool = False) -> tuple[int, int]:
    """MACs of one full step and one cached step of DeepCache at ``branch`` on ``unet``."""
    return call_macs(DeepCacheEngine(unet, DeepCacheConfig(branch=branch)), inputs, attention=attention)


def module_step_macs(model: torch.nn.Module, inputs: dict, rules, attention: bool = False) -> tuple[int, int]:
    """MACs of one full call and one call with every module the ``rules`` select reused (their step
    predicates are ignored)."""
    return call_macs(ModuleCache(model, rules), inputs, attention=attention)
