"""Layer 3: bit-exact parity with the official ``DeepCache==0.1.1`` helper where it is correct.

Tiny SD-, SDXL-, SVD- and DDPM-like U-Nets of the real diffusers classes, DDIM, batched
classifier-free guidance, every branch id, intervals 2, 3 and 5. Where the official helper is wrong
(PLMS's duplicate timestep, keyword timesteps, in-place FreeU), ``test_engine.py`` tests the correct
behaviour and ``docs/ENGINE.md`` documents the difference.
"""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import enabled

from cachediff import DeepCacheSDHelper
from cachediff.testing import sample, tiny_pipe
from cachediff.trees import tree_nbytes
from cachediff.unets import num_branches

official = pytest.importorskip("DeepCache", reason="the official helper: pip install DeepCache==0.1.1")

BRANCHES = {"sd": 12, "sdxl": 9, "svd": 12, "ddpm": 12}


@functools.cache
def pipe_for(kind):
    return tiny_pipe(kind)


def run_with(helper_cls, pipe, cond, interval, branch):
    with enabled(helper_cls(pipe), dict(cache_interval=interval, cache_branch_id=branch)) as helper:
        return sample(pipe, cond, steps=10), helper


@pytest.mark.parametrize("kind", BRANCHES)
def test_branch_ids_match_the_official_numbering(kind):
    pipe, _ = pipe_for(kind)
    assert num_branches(pipe.unet) == BRANCHES[kind]


@pytest.mark.parametrize("interval", [2, 3, 5])
@pytest.mark.parametrize("kind,branch", [(k, b) for k, n in BRANCHES.items() for b in range(n)])
def test_bit_exact_with_official_helper(kind, branch, interval):
    pipe, cond = pipe_for(kind)
    ref, _ = run_with(official.DeepCacheSDHelper, pipe, cond, interval, branch)
    ours, _ = run_with(DeepCacheSDHelper, pipe, cond, interval, branch)
    assert torch.equal(ref, ours)


def _official_cache_nbytes(helper) -> int:
    return tree_nbytes(list(helper.cached_output.values()))


@pytest.mark.parametrize("kind", ["sd", "svd"])
def test_cache_holds_one_feature_not_every_block_output(kind):
    pipe, cond = pipe_for(kind)
    params = dict(cache_interval=3, cache_branch_id=0)
    with enabled(official.DeepCacheSDHelper(pipe), params) as helper:
        sample(pipe, cond, steps=4)
        theirs = _official_cache_nbytes(helper)
    with enabled(DeepCacheSDHelper(pipe), params) as ours:
        sample(pipe, cond, steps=4)
        feature = [k.value for k in ours.engine._slots[0].groups[0].kept.values()]
        assert ours.engine.cache_nbytes == tree_nbytes(feature) > 0
        assert ours.engine.cache_nbytes * 10 <= theirs
    assert ours.engine.cache_nbytes == 0


@pytest.mark.parametrize(
    "scheduler", ["DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "UniPCMultistepScheduler"]
)
@pytest.mark.parametrize("branch", [0, 5, 11])
def test_bit_exact_with_official_helper_on_other_schedulers(scheduler, branch):
    pipe, cond = tiny_pipe("sd", scheduler=scheduler)
    ref, _ = run_with(official.DeepCacheSDHelper, pipe, cond, 3, branch)
    ours, _ = run_with(DeepCacheSDHelper, pipe, cond, 3, branch)
    assert torch.equal(ref, ours)
