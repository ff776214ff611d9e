"""A tiny registry of removable method wrappers (forwards, scheduler methods), diffusers-version independent.

A wrapper replaces a method such as ``module.forward`` on the instance only; removing it restores
exactly what was there before (the class's method, or an instance-level one set by someone else, such
as accelerate's offload hooks). Wrappers are removed in reverse order of installation.

A wrapper is installed as a method bound to its object, so that a ``copy.deepcopy`` of the object (as
Text2Video-Zero makes of its scheduler) gets it re-bound to the copy, where it steps aside: the copy
runs its own unwrapped method, never the original object's, and never calls back into cachediff.

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
import inspect
import types
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
        new = factory(original)

        def method(owner, *args, **kwargs):
            if owner is obj:
                return new(*args, **kwargs)
            return _unwrapped(owner, attr, previous)(*args, **kwargs)  # a copy of obj

        functools.update_wrapper(method, original)
        method.__signature__ = _with_owner(original)  # the bound method shows original's signature
        setattr(obj, attr, types.MethodType(method, obj))
        self._installed.append((obj, attr, previous))

    def remove_all(self) -> None:
        """Restore every wrapped method, newest first."""
        while self._installed:
            obj, attr, previous = self._installed.pop()
            if previous is _MISSING:
                delattr(obj, attr)
            else:
                setattr(obj, attr, previous)


def _unwrapped(owner: object, attr: str, previous: object) -> Callable:
    """What a copy of a wrapped object runs: the class's method, or its copy of the previous one."""
    if previous is _MISSING:
        return getattr(type(owner), attr).__get__(owner)
    if isinstance(previous, types.MethodType):
        return types.MethodType(previous.__func__, owner)
    return previous


def _with_owner(original: Callable) -> inspect.Signature | None:
    try:
        sig = inspect.signature(original)
    except (TypeError, ValueError):
        return None
    owner = inspect.Parameter("_hooked_owner", inspect.Parameter.POSITIONAL_ONLY)
    return sig.replace(parameters=[owner, *sig.parameters.values()])
