"""Module-level caching for any denoiser: U-Net blocks, DiT transformer blocks, anything with a name.

In the spirit of NVIDIA's Cache Diffusion: a list of rules, each a module selector (a wildcard on the
module's dotted name, or a filter function) and a step predicate ``step -> cached?`` (the core's
vocabulary: a step is full or cached). On a cached step a selected module does not run: it returns
its output from its last computed step (``mode="output"``), or adds its last computed residual,
output minus input, to its new input (``mode="residual"``, the right choice for transformer
blocks, whose input still carries fresh information from earlier blocks). Steps are counted by the
same ``StepClock`` as the DeepCache engine.

A selector that matches no module is an error, not a silent no-op; ``plan()`` is a dry run that lists
exactly which modules are cached on which steps.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    >>> cache = ModuleCache(net, [CacheRule("1", every(2), mode="residual")])
    >>> cache.plan(num_steps=5)
    {'1': (1, 3)}
    >>> with cache:
    ...     _ = [net(torch.ones(1, 4)) for _ in range(5)]
    >>> cache.stats.pattern, cache.reused
    ('FCFCF', {'1': 2})
    >>> ModuleCache(net, [CacheRule("blocks.*", every(2))])
    Traceback (most recent call last):
    ...
    ValueError: rule 0 ('blocks.*') matches no module of Sequential; names look like: 0, 1, 2
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .core import PRODUCE, RESIDUAL, Group, Session
from .policy import Static
from .schedule import ranges

Selector = str | Callable[[str, torch.nn.Module], bool]


@dataclass(frozen=True)
class CacheRule:
    """Which modules to reuse on which steps.

    Args:
        select: a wildcard on dotted module names (``fnmatch``: ``*`` also crosses dots, so
            ``"transformer_blocks.*"`` selects every block; descendants of a selected module are
            dropped, the outermost selection wins), or a filter ``(name, module) -> bool``.
        cached: ``step -> bool``: True on the steps where the module is cached (its stored result
            is reused instead of running it). Step 0 always computes, since nothing is stored yet.
        mode: "output" (reuse the output) or "residual" (add the stored output minus input to the
            current input; the module must return a tensor shaped like its first input).
    """

    select: Selector
    cached: Callable[[int], bool]
    mode: str = "output"

    def __post_init__(self) -> None:
        if self.mode not in ("output", "residual"):
            raise ValueError(f"mode must be 'output' or 'residual', got {self.mode!r}")

    def matches(self, name: str, module: torch.nn.Module) -> bool:
        if callable(self.select):
            return bool(self.select(name, module))
        return fnmatch.fnmatchcase(name, self.select)


def every(interval: int, start: int = 0, end: int | None = None) -> Callable[[int], bool]:
    """Cached on all steps but every ``interval``-th, within ``[start, end)`` only (DeepCache's uniform).

    Example:
        >>> [s for s in range(10) if every(3, start=2)(s)]
        [3, 4, 6, 7, 9]
    """
    if not isinstance(interval, int) or interval < 1:
        raise ValueError(f"interval must be an integer >= 1, got {interval!r}")

    def cached(step: int) -> bool:
        inside = step >= start and (end is None or step < end)
        return inside and (step - start) % interval != 0

    return cached


def dit_rule(model: torch.nn.Module, interval: int, shallow: int = 1) -> CacheRule:
    """DeepCache's idea on a DiT (PixArt-alpha, DiT, SD3-style ``transformer_blocks``).

    The first and last ``shallow`` blocks run on every step; the middle blocks
    (``middle_blocks``) run every ``interval``-th step and otherwise add their stored residual.

    Example:
        >>> from cachediff.testing import tiny_transformer
        >>> model, _ = tiny_transformer()
        >>> ModuleCache(model, [dit_rule(model, interval=3)]).plan(5)
        {'transformer_blocks.1': (1, 2, 4), 'transformer_blocks.2': (1, 2, 4)}
    """
    return CacheRule(middle_blocks(model, shallow), every(interval), mode="residual")


def middle_blocks(model: torch.nn.Module, shallow: int = 1) -> Selector:
    """A selector of a transformer's ``transformer_blocks`` but the first and last ``shallow``."""
    blocks = getattr(model, "transformer_blocks", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__} has no transformer_blocks; write CacheRules for it instead")
    n = len(blocks)
    if not 0 <= shallow < n / 2:
        raise ValueError(f"shallow must be in [0, {n / 2}) for {n} blocks, got {shallow}")
    middle = frozenset(f"transformer_blocks.{i}" for i in range(shallow, n - shallow))

    def selected(name: str, module: torch.nn.Module) -> bool:
        return name in middle

    selected.__name__ = f"middle_blocks(shallow={shallow})"
    return selected


def denoiser(target) -> torch.nn.Module:
    """The denoising network of a pipeline (``.transformer`` or ``.unet``), or the module itself."""
    for attr in ("transformer", "unet"):
        model = getattr(target, attr, None)
        if isinstance(model, torch.nn.Module):
            return model
    if isinstance(target, torch.nn.Module):
        return target
    raise TypeError(
        f"expected a pipeline with .transformer or .unet, or a module; got {type(target).__name__}"
    )


class ModuleCache(Session):
    """Caches selected modules of ``model`` across the steps of each sampling run.

    Each rule is one group of the caching core (``cachediff.core``): its modules are ``PRODUCE``
    ("output" mode) or ``RESIDUAL``, and its step predicate is a static policy.

    Args:
        model: the denoiser (``pipe.transformer``, ``pipe.unet`` or any module), left unmodified.
        rules: ``CacheRule`` list; a module selected by several rules follows the first.
        pipeline: optional owner of the ``.scheduler`` that counts steps (see ``cachediff.clock``).
    """

    def __init__(self, model: torch.nn.Module, rules: list[CacheRule], pipeline=None):
        self.rules = list(rules)
        self.selected = self._select(model)
        super().__init__(model, [self._group(rule) for rule in self.rules], pipeline=pipeline)

    def _select(self, model: torch.nn.Module) -> dict[str, CacheRule]:
        modules = dict(model.named_modules())
        modules.pop("", None)
        chosen: dict[str, CacheRule] = {}
        for i, rule in enumerate(self.rules):
            names = [n for n, m in modules.items() if rule.matches(n, m)]
            if not names:
                sample = ", ".join(list(modules)[:8])
                raise ValueError(
                    f"rule {i} ({_label(rule.select)}) matches no module of {type(model).__name__}; "
                    f"names look like: {sample}"
                )
            for name in names:
                chosen.setdefault(name, rule)
        return {n: r for n, r in chosen.items() if not any(n.startswith(p + ".") for p in chosen)}

    def _group(self, rule: CacheRule) -> Group:
        role = RESIDUAL if rule.mode == "residual" else PRODUCE
        roles = {name: role for name, r in self.selected.items() if r is rule}

        def full(step: int) -> bool:  # step 0 always computes: nothing is stored yet
            return step == 0 or not rule.cached(step)

        return Group(roles, Static(lambda num_steps: full))

    def plan(self, num_steps: int) -> dict[str, tuple[int, ...]]:
        """Dry run: for every selected module, the steps on which it is cached (step 0 never)."""
        return {
            name: tuple(s for s in range(1, num_steps) if rule.cached(s))
            for name, rule in self.selected.items()
        }

    def describe(self, num_steps: int) -> str:
        """The plan as text, one module per line."""
        lines = [f"{type(self.model).__name__}: {len(self.selected)} cached modules over {num_steps} steps"]
        for name, steps in self.plan(num_steps).items():
            rule = self.selected[name]
            lines.append(f"  {name} [{rule.mode}] cached on {len(steps)} steps: {ranges(steps)}")
        return "\n".join(lines)


def _label(select: Selector) -> str:
    return repr(select) if isinstance(select, str) else getattr(select, "__name__", "filter")
