"""A tiny registry of removable method wrappers (forwards, scheduler methods), diffusers-version independent.

A wrapper replaces a method such as ``module.forward`` on the instance only; removing it restores
exactly what was there before (the class's method, or an instance-level one set by someone else, such
as accelerate's offload hooks). Wrappers are removed in reverse order of installation.

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(2, 2)
    >>> hooks = Hooks()
    >>> hooks.wrap(lin, lambda original: lambda x: original(x) * 0)
    >>> bool((lin(torch.ones(2)) == 0).all())
    True
    >>> hooks.remove_all()
    >>> "forward" in vars(lin)
    False
"""

from __future__ import annotations

import functools
from collections.abc import Callable

_MISSING = object()


class Hooks:
    """Installs and removes method wrappers; ``wrap`` takes a factory ``original -> new method``."""

    def __init__(self) -> None:
        self._installed: list[tuple[object, str, object]] = []

    def __len__(self) -> int:
        return len(self._installed)

    def wrap(self, obj: object, factory: Callable[[Callable], Callable], attr: str = "forward") -> None:
        """Replace ``obj.<attr>`` by ``factory(current bound method)`` on the instance."""
        previous = vars(obj).get(attr, _MISSING)
        original = getattr(obj, attr)
        new = functools.update_wrapper(factory(original), original)  # keeps the signature visible
        setattr(obj, attr, new)
        self._installed.append((obj, attr, previous))

    def remove_all(self) -> None:
        """Restore every wrapped method, newest first."""
        while self._installed:
            obj, attr, previous = self._installed.pop()
            if previous is _MISSING:
                delattr(obj, attr)
            else:
                setattr(obj, attr, previous)
