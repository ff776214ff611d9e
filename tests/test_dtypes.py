"""Layer 2: half precision. The cache keeps the model's dtype, interval 1 stays bit-exact, and nothing
the engine hands out is upcast (bf16 and fp16 on the CPU, the same code paths as on a GPU)."""

from __future__ import annotations

import pytest
import torch
from helpers import enabled
from torch.utils import _pytree as pytree

import cachediff
from cachediff.testing import sample, tiny_pipe

DTYPES = [torch.bfloat16, torch.float16]


def half_pipe(dtype: torch.dtype):
    pipe, cond = tiny_pipe("sd")
    pipe.unet.to(dtype)
    return pipe, {k: v.to(dtype) for k, v in cond.items()}


def run(pipe, cond, dtype) -> torch.Tensor:
    call = lambda m, x, t, c: m(x.to(dtype), t, **c, return_dict=False)[0].float()  # noqa: E731
    return sample(pipe, cond, steps=6, call=call)


@pytest.mark.parametrize("dtype", DTYPES)
def test_interval_1_is_bit_exact_in_half_precision(dtype):
    pipe, cond = half_pipe(dtype)
    base = run(pipe, cond, dtype)
    with cachediff.deepcache(pipe, interval=1, branch=1):
        assert torch.equal(run(pipe, cond, dtype), base)


def output_dtypes(pipe, cond, dtype) -> tuple[torch.Tensor, set]:
    """A run's result and the (module, dtype) of every tensor a module handed out."""
    seen, names = set(), {m: n for n, m in pipe.unet.named_modules()}

    def record(m, args, out):
        if m in names and torch.is_tensor(out):
            seen.add((names[m], out.dtype))

    # a global hook: a hook on a skippable module would make every call full (cachediff.guard)
    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        return run(pipe, cond, dtype), seen
    finally:
        hook.remove()


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_cache_keeps_the_model_dtype_and_hands_out_no_upcast(dtype):
    pipe, cond = half_pipe(dtype)
    base, uncached = output_dtypes(pipe, cond, dtype)
    engine = cachediff.DeepCacheEngine(pipe.unet, cachediff.DeepCacheConfig(interval=3, branch=1), pipe)
    with enabled(engine):
        out, cached = output_dtypes(pipe, cond, dtype)
        values = [k.value for slot in engine._slots.values() for s in slot.groups for k in s.kept.values()]
        kept = [t for t in pytree.tree_leaves(values) if torch.is_tensor(t)]
        nbytes = engine.cache_nbytes
    assert engine.stats.pattern == "FCCFCC" and kept and {t.dtype for t in kept} == {dtype}
    assert cached <= uncached  # every module hands out the dtype it hands out uncached
    assert nbytes == sum(t.nbytes for t in kept) and torch.isfinite(out).all() and not torch.equal(out, base)
