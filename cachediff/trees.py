"""Helpers on the nested outputs of modules (tensors in tuples, dicts, model outputs): their layout,
placeholders of a layout, copies and sizes. The caching core reads and builds module outputs only
through these.

Example:
    >>> import torch
    >>> out = (torch.ones(2, 3), {"scale": 0.5})
    >>> placeholder(*layout(out), torch.zeros)
    (tensor([[0., 0., 0.],
            [0., 0., 0.]]), {'scale': 0.5})
    >>> tree_nbytes(out), input_key(out[0])
    (24, ((2, 3), torch.float32, device(type='cpu')))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree as pytree


def tree_nbytes(tree) -> int:
    """Bytes of all tensors in a nested structure (tuples, lists, dicts, model outputs)."""
    return sum(t.nbytes for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor))


def layout(out) -> tuple[list, Any]:
    """Shapes and dtypes of an output tree, enough to build a placeholder of the same structure."""
    leaves, spec = pytree.tree_flatten(out)
    meta = [(t.shape, t.dtype, t.device) if isinstance(t, torch.Tensor) else ("value", t) for t in leaves]
    return meta, spec


def placeholder(meta: list, spec, make: Callable = torch.empty) -> Any:
    """An output of the recorded layout: ``torch.empty`` (no memory touched) where only skipped
    modules read it, ``torch.zeros`` where a running module does."""
    leaves = [m[1] if m[0] == "value" else make(m[0], dtype=m[1], device=m[2]) for m in meta]
    return pytree.tree_unflatten(leaves, spec)


def first_tensor(tree) -> torch.Tensor | None:
    """The first tensor of a nested structure, if any."""
    return next((t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)), None)


def input_key(x) -> tuple | None:
    """The layout of a call's first input: a change means nothing kept for it may be reused."""
    return (tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else None


def clone(out) -> Any:
    """A copy of every tensor of an output tree (the model may modify what it is handed in place)."""
    return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)
