"""``torch.compile`` with caching: compile the denoiser's own forward, then enable caching.

The caching hooks wrap module methods on the instance. Compiled underneath them, the denoiser's
forward traces the hooks of its inner modules too: dynamo guards on the engine's per-call decision, so
a static schedule compiles to one graph per kind of step (the first full step of a run, later full
steps, cached steps) with no graph break (``fullgraph=True`` holds), and later steps and later runs
reuse those graphs without recompiling. Step counting, timing and statistics stay outside, in the
engine's wrapper of the denoiser call. The adaptive schedule reads the shallow feature's change on the
host, which breaks the graph: compile it with ``fullgraph=False``.

Example:
    >>> import cachediff  # doctest: +SKIP
    >>> cachediff.compile_denoiser(pipe, fullgraph=True)  # doctest: +SKIP
    >>> with cachediff.deepcache(pipe, interval=3, branch=0):  # doctest: +SKIP
    ...     image = pipe("a red fox").images[0]  # the first run compiles, later runs do not
"""

from __future__ import annotations

import torch

from .core import CUDA_GRAPHS
from .modules import denoiser

#: ``torch.compile`` modes that capture CUDA graphs (on CUDA tensors).
GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_denoiser(target, **options) -> torch.nn.Module:
    """Compile the denoiser of ``target`` (a pipeline or the module) in place; return the module.

    ``options`` go to ``torch.compile`` (``backend``, ``mode``, ``fullgraph``, ``dynamic``). Undo with
    ``uncompile(model)``. A mode that captures CUDA graphs marks the model, so that caching copies
    what outlives a call out of the graphs' memory pool (``cachediff.core.Session``).

    Raises:
        RuntimeError: the forward is already wrapped (caching enabled, or compiled): compile first.
    """
    model = denoiser(target)
    if "forward" in vars(model):
        raise RuntimeError(
            f"{type(model).__name__}.forward is already wrapped (caching enabled or compiled); "
            "call compile_denoiser before enabling caching"
        )
    model.forward = torch.compile(model.forward, **options)
    setattr(model, CUDA_GRAPHS, options.get("mode") in GRAPH_MODES)
    return model


def uncompile(target) -> torch.nn.Module:
    """Restore the eager forward of a denoiser compiled by ``compile_denoiser``."""
    model = denoiser(target)
    vars(model).pop("forward", None)
    vars(model).pop(CUDA_GRAPHS, None)
    return model
