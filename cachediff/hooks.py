"""A tiny registry of removable method wrappers (forwards, scheduler methods), diffusers-version independent.

A wrapper replaces a method such as ``module.forward`` on the instance only; removing it restores
exactly what was there before (the class's method, or an instance-level one set by someone else, such
as accelerate's offload hooks). Wrappers are removed in reverse order of installation.

A wrapper is installed as a method bound to its object, so that a ``copy.deepcopy`` of the object (as
Text2Video-Zero makes of its scheduler) gets it re-bound to the copy, where it steps aside: the copy
runs its own unwrapped method, never the original object's, and never calls back into cachediff.
Such a copy's leftover is *inert*: it holds no reference to cachediff's state once the wrapper is
removed, wrapping the copy later does not nest on it, and ``clean`` deletes it from objects that
can be reached (``Session.disable`` cleans everything its pipeline holds).

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
import weakref
from collections.abc import Callable

import torch

_MISSING = object()

#: Which ``Installed`` has hooks on which model (kept outside the model, which stays untouched).
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Hooks:
    """Installs and removes method wrappers; ``wrap`` takes a factory ``original -> new method``."""

    def __init__(self) -> None:
        self._installed: list[tuple[object, str, object]] = []

    def __len__(self) -> int:
        return len(self._installed)

    def wrap(self, obj: object, factory: Callable[[Callable], Callable], attr: str = "forward") -> None:
        """Replace ``obj.<attr>`` by ``factory(current bound method)`` on the instance."""
        previous = _beneath_leftovers(obj, attr)
        if previous is not vars(obj).get(attr, _MISSING):
            _restore(obj, attr, previous)
        original = getattr(obj, attr)
        state = _Wrapper(obj, factory(original), previous)

        def method(owner, *args, **kwargs):
            if owner is state.obj:
                return state.new(*args, **kwargs)
            return _unwrapped(owner, attr, state.previous)(*args, **kwargs)  # a copy of obj

        functools.update_wrapper(method, original)
        method.__signature__ = _with_owner(original)  # the bound method shows original's signature
        method._cachediff_wrapper, state.method = state, method
        setattr(obj, attr, types.MethodType(method, obj))
        self._installed.append((obj, attr, state))

    def remove_all(self) -> None:
        """Restore every wrapped method, newest first; copies' leftovers forget cachediff's state."""
        while self._installed:
            obj, attr, state = self._installed.pop()
            _restore(obj, attr, state.previous)
            state.obj = state.new = None
            vars(state.method).pop("__wrapped__", None)  # nor keep the original object alive


class Installed:
    """Hooks on one model, installed by ``enable`` and removed exactly by ``disable``; one enabled
    installer per model; all or nothing (a failing install removes what it installed); a context
    manager. Subclasses say what to install (``_install``), what every ``enable`` starts
    (``_start``) and what ``disable`` drops (``_drop``)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self._hooks = model, Hooks()

    @property
    def enabled(self) -> bool:
        return len(self._hooks) > 0

    def enable(self):
        """Install the hooks (harmless if already installed) and start."""
        owner = _OWNERS.get(self.model)
        if owner is not None and owner is not self:
            raise RuntimeError(
                f"this {type(self.model).__name__} is already accelerated by another enabled engine; "
                "disable that first"
            )
        first = not self.enabled
        try:
            if first:
                _OWNERS[self.model] = self
                self._install(self._hooks)
            self._start()
        except BaseException:
            if first:
                self.disable()
            raise
        return self

    def disable(self) -> None:
        """Remove every hook, restoring the original methods exactly, and drop what is held."""
        if _OWNERS.get(self.model) is self:
            del _OWNERS[self.model]
        self._hooks.remove_all()
        self._drop()

    def __enter__(self):
        return self.enable()

    def __exit__(self, *exc) -> None:
        self.disable()

    def _install(self, hooks: Hooks) -> None:
        raise NotImplementedError

    def _start(self) -> None:
        pass

    def _drop(self) -> None:
        pass


def clean(objects) -> int:
    """Delete the inert leftovers of wrappers (see the module docstring) from ``objects``, restoring
    what was beneath them; returns how many were removed.

    Example:
        >>> import copy, torch
        >>> lin, hooks = torch.nn.Linear(2, 2), Hooks()
        >>> hooks.wrap(lin, lambda original: original)
        >>> twin = copy.deepcopy(lin)
        >>> hooks.remove_all()
        >>> "forward" in vars(twin), clean([twin]), "forward" in vars(twin)
        (True, 1, False)
    """
    removed = 0
    for obj in objects:
        for attr in [a for a, v in vars(obj).items() if _leftover(obj, v)]:
            _restore(obj, attr, _beneath_leftovers(obj, attr))
            removed += 1
    return removed


def held(model: torch.nn.Module, pipeline) -> list:
    """Where a wrapper's leftovers may sit: the model's modules, and the objects a pipeline holds
    (the modules of its models; copies made while hooks were installed: Text2Video-Zero's scheduler)."""
    objects = list(model.modules())
    for value in vars(pipeline).values() if pipeline is not None else ():
        if isinstance(value, torch.nn.Module):
            objects += value.modules()
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            objects.append(value)
    return objects


class _Wrapper:
    """The state of one installed wrapper: the object it is for (``None`` once removed), the new
    method and what the instance held before."""

    def __init__(self, obj: object, new: Callable, previous: object):
        self.obj, self.new, self.previous = obj, new, previous
        self.method: Callable | None = None


def _leftover(obj: object, value: object) -> bool:
    """Whether ``value`` is a wrapper of this module bound to ``obj`` but not installed on it."""
    state = getattr(getattr(value, "__func__", None), "_cachediff_wrapper", None)
    return isinstance(state, _Wrapper) and getattr(value, "__self__", None) is obj and state.obj is not obj


def _beneath_leftovers(obj: object, attr: str) -> object:
    """What ``obj``'s instance holds for ``attr`` once leftovers are peeled off (``_MISSING``: nothing)."""
    value = vars(obj).get(attr, _MISSING)
    while _leftover(obj, value):
        value = value.__func__._cachediff_wrapper.previous
        if isinstance(value, types.MethodType):
            value = types.MethodType(value.__func__, obj)  # the copy's own version of it
    return value


def _restore(obj: object, attr: str, previous: object) -> None:
    if previous is _MISSING:
        vars(obj).pop(attr, None)
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
