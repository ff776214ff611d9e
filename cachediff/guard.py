"""The read-while-skipped guard: a cached call skips modules, so anything that reads a skipped module
on every call (a forward hook on it, as self-attention guidance registers; an attention processor that
records what it computes) would read something stale. Where one is present, calls run in full.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    >>> skippable = Skippable.of(net, ["1"])
    >>> skippable.read()
    False
    >>> handle = net[1].register_forward_hook(lambda *args: None)
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     read = skippable.read()
    >>> read, "carries a forward hook" in str(caught[0].message)
    (True, True)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

#: Attention processors that record what their module computes for the pipeline to read after the
#: call (diffusers' self-attention guidance, Attend-and-Excite, Pix2Pix-Zero, LEDITS++): where one
#: sits in a module that a cached call skips, what it recorded would be stale, so calls run in full.
RECORDING_PROCESSORS = frozenset(
    {
        "CrossAttnStoreProcessor",
        "AttendExciteAttnProcessor",
        "Pix2PixZeroAttnProcessor",
        "LEDITSCrossAttnProcessor",
    }
)


@dataclass
class Skippable:
    """The modules a cached call skips (the cut's modules and everything inside them), their hook
    dicts (stable objects that ``register_forward_hook`` fills) and their attention modules."""

    modules: list[tuple[str, torch.nn.Module]] = field(default_factory=list)
    hooks: list[dict] = field(default_factory=list)
    attention: list[tuple[str, torch.nn.Module]] = field(default_factory=list)

    @classmethod
    def of(cls, model: torch.nn.Module, names) -> Skippable:
        modules = [
            (f"{name}.{sub}".rstrip("."), m)
            for name in names
            for sub, m in model.get_submodule(name).named_modules()
        ]
        hooks = [d for _, m in modules for d in (m._forward_hooks, m._forward_pre_hooks)]
        return cls(modules, hooks, [(n, m) for n, m in modules if hasattr(m, "processor")])

    def read(self) -> bool:
        """Whether something outside reads a module that a cached call would skip: then the call runs
        in full, with a warning, so that what it reads is current. About 20 us on SD's U-Net: one
        C-level ``any`` over the hook dicts, one look at each attention processor."""
        if not any(self.hooks) and not any(recording(m) for _, m in self.attention):
            return False
        for name, module in self.modules:
            processor = recording(module)
            if module._forward_hooks or module._forward_pre_hooks or processor:
                what = f"the attention processor {processor}" if processor else "a forward hook"
                warnings.warn(
                    f"{name} carries {what}, which reads it on every call, so calls run in full while it "
                    "is there (no speedup); self-attention guidance and attention-editing pipelines do this",
                    stacklevel=4,
                )
                break
        return True


def recording(module: torch.nn.Module) -> str | None:
    """The name of the module's attention processor if it records what it computes, else None."""
    name = type(getattr(module, "processor", None)).__name__
    return name if name in RECORDING_PROCESSORS else None
