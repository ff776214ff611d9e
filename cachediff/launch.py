"""Where this process runs: its device, and its rank among the processes of a launch (torchrun,
accelerate), each making the shards of seeds that are its own.

Example:
    >>> with launched() as (rank, world):
    ...     print(rank, world)
    0 1
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def launched() -> Iterator[tuple[int, int]]:
    """This process's rank and the number of processes (torchrun and accelerate set both); joins
    their process group (gloo) where there are several, and leaves it at the end."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    try:
        yield rank, world
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def wait_for_all(world: int) -> None:
    """Wait until every process of the launch gets here (nothing for a single process)."""
    if world > 1:
        torch.distributed.barrier()


def check_device(name: str) -> torch.device:
    """The torch device ``name``, or a one-line ``ValueError`` if it is not one or is not available.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("foo")
        Traceback (most recent call last):
        ...
        ValueError: unknown device 'foo'; give cpu, cuda, cuda:N or mps
    """
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; give cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this torch build has no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available here; use --device cpu")
    return device
