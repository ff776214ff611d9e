"""torch.compile under caching: one graph per kind of step, no graph break, no recompilation after the
first run. Dynamo's tracing is what is tested, so the fast ``eager`` backend stands in for inductor
(the slow test runs inductor too)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import cachediff
from cachediff.testing import denoise, tiny_pipe


def run(pipe, cond, steps: int = 10) -> torch.Tensor:
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return denoise(pipe.unet, pipe.scheduler, x, cond, steps)


def compiled_runs(backend: str, cache: dict | None = None, **options):
    torch._dynamo.reset()
    pipe, cond = tiny_pipe("sd")
    with cachediff.deepcache(pipe, interval=3, branch=1, **(cache or {})):
        eager = run(pipe, cond)
    cachediff.compile_denoiser(pipe, backend=backend, fullgraph=True, **options)  # a graph break would raise
    try:
        with cachediff.deepcache(pipe, interval=3, branch=1, **(cache or {})) as engine:
            counters.clear()
            first = run(pipe, cond)
            graphs = counters["stats"]["unique_graphs"]
            counters.clear()
            second = run(pipe, cond)
            assert engine.stats.pattern == "FCCFCCFCCF"
            return eager, first, second, graphs, dict(counters["stats"])
    finally:
        cachediff.uncompile(pipe)


def test_static_schedule_compiles_once_without_graph_breaks():
    eager, first, second, graphs, later = compiled_runs("eager")
    assert graphs == 3  # first full step of a run, full steps, cached steps
    assert later.get("unique_graphs", 0) == 0  # a second run reuses them
    assert torch.equal(first, eager) and torch.equal(second, eager)


@pytest.mark.parametrize("time", ["timestep", "shallow"])
def test_the_forecast_compiles_without_graph_breaks_and_later_runs_reuse_its_graphs(time):
    """Its weights are host floats of the call's time: dynamo specialises on the first values, then
    makes them inputs, so the first run compiles a few more graphs (7 here) and later runs none."""
    eager, first, second, graphs, later = compiled_runs("eager", dict(reuse="forecast", order=2, time=time))
    assert graphs < 8  # within dynamo's default cache limit: no fall-back to eager
    assert later.get("unique_graphs", 0) == 0
    assert torch.equal(first, eager) and torch.equal(second, eager)


def test_compile_after_enabling_is_refused():
    pipe, _ = tiny_pipe("sd")
    with cachediff.deepcache(pipe), pytest.raises(RuntimeError, match="compile_denoiser before"):
        cachediff.compile_denoiser(pipe)
    assert "forward" not in vars(pipe.unet)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_inductor_matches_eager(mode):
    """Inductor, also in the CUDA-graph mode (on a CPU, reduce-overhead compiles as the default mode:
    CUDA graphs apply to CUDA tensors only, so this checks the graph count and no recompilation)."""
    eager, first, second, graphs, later = compiled_runs("inductor", **({"mode": mode} if mode else {}))
    assert graphs == 3 and later.get("unique_graphs", 0) == 0
    torch.testing.assert_close(second, eager, rtol=1e-4, atol=1e-4)
