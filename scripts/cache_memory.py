"""Bytes held between steps by the cache: cachediff vs the official DeepCache 0.1.1 helper.

Runs one full and one cached step of a random-weight U-Net of a real architecture (the sizes depend
only on the architecture) through both helpers and reports what each keeps.

Example:
    python scripts/cache_memory.py --arch sd1.5 --size 64 --batch 2 --branches 0 1 5 11
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch
from diffusers import DDIMScheduler

from cachediff import DeepCacheSDHelper
from cachediff.architectures import ARCHITECTURES, build, example_inputs
from cachediff.trees import tree_nbytes


@torch.no_grad()
def measure(helper_cls, pipe, inputs, branch: int, held) -> int:
    """Run a full and a cached step under ``helper_cls``; return ``held(helper)`` after them."""
    helper = helper_cls(pipe)
    helper.set_params(cache_interval=2, cache_branch_id=branch)
    helper.enable()
    for t in pipe.scheduler.timesteps[:2]:
        pipe.unet(inputs["sample"], t, **{k: v for k, v in inputs.items() if k not in ("sample", "timestep")})
        pipe.scheduler.step(torch.zeros_like(inputs["sample"]), t, inputs["sample"])
    nbytes = held(helper)
    helper.disable()
    return nbytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sd1.5", choices=sorted(ARCHITECTURES), help="U-Net architecture")
    p.add_argument("--size", type=int, default=64, help="latent side (64 = 512x512 images for SD 1.5)")
    p.add_argument("--batch", type=int, default=2, help="U-Net batch (2 = one image with CFG)")
    p.add_argument("--branches", type=int, nargs="+", default=[0], help="branch ids to measure")
    args = p.parse_args()

    from DeepCache import DeepCacheSDHelper as Official

    unet = build(args.arch)
    pipe = SimpleNamespace(unet=unet, scheduler=DDIMScheduler())
    pipe.scheduler.set_timesteps(10)
    inputs = example_inputs(unet, batch=args.batch, size=args.size)
    print(f"{args.arch}, latent {args.size}x{args.size}, batch {args.batch}")
    print("| branch (paper) | official helper | cachediff | ratio |")
    print("|---|---|---|---|")
    for b in args.branches:
        theirs = measure(Official, pipe, inputs, b, lambda h: tree_nbytes(list(h.cached_output.values())))
        ours = measure(DeepCacheSDHelper, pipe, inputs, b, lambda h: h.engine.cache_nbytes)
        print(f"| {b} ({b + 1}) | {theirs / 2**20:.1f} MiB | {ours / 2**20:.2f} MiB | {theirs / ours:.0f}x |")


if __name__ == "__main__":
    main()
