"""The forecast act (issue 15): cached calls hand out the polynomial through the deep features of the
last k full calls. Exact on analytic models whose deep feature is a polynomial in t of degree < k."""

from __future__ import annotations

import math
from types import SimpleNamespace

import diffusers
import pytest
import torch
from torch import nn

import cachediff
from cachediff import DeepCacheConfig
from cachediff.acts import Forecast
from cachediff.clock import StepClock, noise_time
from cachediff.core import CUDA_GRAPHS, PRODUCE, Group, Session, runs_as_cuda_graphs
from cachediff.policy import Static
from cachediff.testing import sample, tiny_pipe

STEPS = 12
#: Unevenly spaced times, as a scheduler's can be: 1000 (1 - s / T)^2
TIMES = [1000.0 * (1 - s / STEPS) ** 2 for s in range(STEPS)]


class Poly(nn.Module):
    """f(t) = v * sum_i c_i (t / 1000)^i, float64."""

    def __init__(self, degree: int):
        super().__init__()
        self.coeffs = [1.0, -2.0, 1.5, 0.7, -0.4][: degree + 1]
        self.v = torch.linspace(-1, 1, 5, dtype=torch.float64)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.v * sum(c * (t / 1000) ** i for i, c in enumerate(self.coeffs))


class Net(nn.Module):
    """A shallow path (x) around a deep module (a polynomial in the timestep)."""

    def __init__(self, degree: int):
        super().__init__()
        self.deep = Poly(degree)

    def forward(self, x: torch.Tensor, timestep: float) -> torch.Tensor:
        return x + self.deep(torch.tensor(timestep, dtype=torch.float64))


def errors(degree: int, order: int, time: str = "timestep", interval: int = 4) -> list[float]:
    """Max error of each call against the uncached model, every ``interval``-th call full."""
    net, x = Net(degree), torch.zeros(5, dtype=torch.float64)
    exact = [net(x, t) for t in TIMES]
    group = Group({"deep": PRODUCE}, Static(lambda n: lambda step: step % interval == 0))
    with Session(net, [group], act=Forecast(order, time)) as session:
        got = [net(x, t) for t in TIMES]
    assert session.stats.n_full == len(range(0, STEPS, interval))
    return [float((g - e).abs().max()) for g, e in zip(got, exact, strict=True)]


def settled(err: list[float], order: int, interval: int = 4) -> list[float]:
    """The errors once ``order`` full calls are kept (before, the polynomial has fewer points)."""
    return err[(order - 1) * interval :]


@pytest.mark.parametrize("order", [1, 2, 3])
def test_a_forecast_of_order_k_is_exact_for_polynomials_of_degree_below_k(order):
    for degree in range(order):
        assert max(settled(errors(degree, order), order)) < 1e-12, (degree, order)
    assert max(settled(errors(order, order), order)) > 1e-3  # of degree k it is not


def test_the_timestep_is_the_right_variable_when_steps_are_unevenly_spaced():
    assert max(settled(errors(1, 2, "timestep"), 2)) < 1e-12  # linear in t: a line through two points
    assert max(settled(errors(1, 2, "step"), 2)) > 1e-3  # but not linear in the step index


def test_a_configured_forecast_extrapolates_in_the_timestep_by_default():
    """The act a configuration builds (``DeepCacheConfig`` -> ``act_for``, as every accelerator does)
    forecasts in the timestep unless told otherwise: exact for a feature linear in t on uneven times."""
    from cachediff.acts import act_for

    config = DeepCacheConfig(interval=4, reuse="forecast", order=2)
    net, x = Net(1), torch.zeros(5, dtype=torch.float64)
    group = Group({"deep": PRODUCE}, Static(lambda n: lambda step: step % 4 == 0))
    with Session(net, [group], act=act_for(config.reuse, config.order, config.time, config.fallback)):
        got = [net(x, t) for t in TIMES]
    exact = [net(x, t) for t in TIMES]
    assert max(float((g - e).abs().max()) for g, e in zip(got[4:], exact[4:], strict=True)) < 1e-12


def test_the_probe_measures_the_change_relative_to_the_previous_shallow_feature():
    """|x - x_prev|.mean / |x_prev|.mean, read by the adaptive schedule: on inputs 1, 2, 6 the changes
    are 1 and 2 (normalised by the current feature they would be 0.5 and 0.67)."""
    net = nn.Sequential(nn.Identity())  # the group's first module sees the input: the probe
    group = Group({"0": PRODUCE}, Static(lambda n: lambda step: step % 2 == 0))
    with Session(net, [group], track_change=True) as session:
        for value in (1.0, 2.0, 6.0):
            net(torch.full((5,), value))
    assert session.stats.changes == [None, pytest.approx(1.0), pytest.approx(2.0)]


def test_order_1_is_replay():
    replay = [float(e) for e in errors(2, 1)]
    net, x = Net(2), torch.zeros(5, dtype=torch.float64)
    with Session(net, [Group({"deep": PRODUCE}, Static(lambda n: lambda s: s % 4 == 0))]):
        got = [net(x, t) for t in TIMES]
    exact = [net(x, t) for t in TIMES]
    assert replay == [float((g - e).abs().max()) for g, e in zip(got, exact, strict=True)]


def test_the_forecast_keeps_order_features_and_reports_them():
    net, x = Net(1), torch.zeros(5, dtype=torch.float64)
    for order in (1, 2, 3):
        group = Group({"deep": PRODUCE}, Static(lambda n: lambda s: s % 2 == 0))
        with Session(net, [group], act=Forecast(order)) as session:
            _ = [net(x, t) for t in TIMES]
            assert session.cache_nbytes == order * x.nbytes


def test_a_repeated_time_replaces_its_point():
    act = Forecast(order=2, time="timestep")
    kept = act.keep(
        act.keep(act.keep(None, torch.tensor([1.0]), 900), torch.tensor([2.0]), 800), torch.tensor([4.0]), 800
    )
    assert [p.t for p in kept] == [900, 800]  # PLMS evaluates one timestep twice: no division by zero
    assert torch.equal(act.give(kept, None, 700), torch.tensor([7.0]))


def test_the_clock_reads_the_schedulers_timesteps_once_per_run():
    scheduler = diffusers.DDIMScheduler()
    clock = StepClock(SimpleNamespace(scheduler=scheduler))
    clock.start()
    scheduler.set_timesteps(5)
    assert [clock.time(s) for s in range(6)] == [float(t) for t in scheduler.timesteps] + [None]
    scheduler.set_timesteps(3)  # a new run: a new copy
    assert clock.time(0) == float(scheduler.timesteps[0])
    clock.detach()


def forecast_pipe(scheduler: str):
    pipe, cond = tiny_pipe("sd", scheduler)
    return pipe, cond


def test_interval_1_stays_bit_exact_and_runs_do_not_leak_into_each_other():
    pipe, cond = forecast_pipe("DDIMScheduler")
    base = sample(pipe, cond, steps=8)
    with cachediff.deepcache(pipe, interval=1, branch=1, reuse="forecast", order=3):
        assert torch.equal(sample(pipe, cond, steps=8), base)
    with cachediff.deepcache(pipe, interval=3, branch=1, reuse="forecast", order=2) as engine:
        first, second = sample(pipe, cond, steps=8), sample(pipe, cond, steps=8)
        assert engine.stats.pattern == "FCCFCCFC"
    assert torch.equal(first, second) and not torch.equal(first, base)


@pytest.mark.parametrize("schedule", ["uniform", "non-uniform", "adaptive"])
def test_the_forecast_works_with_every_schedule_and_with_plms(schedule):
    pipe, cond = forecast_pipe("PNDMScheduler")  # PLMS: one timestep evaluated twice
    base = sample(pipe, cond, steps=10)
    config = DeepCacheConfig(interval=3, branch=1, schedule=schedule, center=4, reuse="forecast", order=3)
    engine = cachediff.DeepCacheEngine(pipe.unet, config, pipe)
    with engine:
        out = sample(pipe, cond, steps=10)
    assert torch.isfinite(out).all() and engine.stats.n_cached > 0
    assert (out - base).abs().max() < 10 * base.abs().max()  # close to the model's scale, not blown up


class Probed(nn.Module):
    """The deep module sees ``[t, wobble]`` (its input is the group's probe) and returns the
    polynomial of ``t`` alone: the wobble moves the probe, not the deep feature."""

    def __init__(self, degree: int):
        super().__init__()
        self.poly = Poly(degree)

    def forward(self, probe: torch.Tensor) -> torch.Tensor:
        return self.poly(probe[0])


class ProbedNet(nn.Module):
    """Full calls every 4th (as ``probed_outputs`` schedules them); the probe's second entry is
    ``jump`` times the number of full calls before this one: flat between full calls, so it
    extrapolates badly (a line through its jumps) and replays exactly."""

    def __init__(self, degree: int, jump: float):
        super().__init__()
        self.deep, self.jump, self.calls = Probed(degree), jump, 0

    def forward(self, x: torch.Tensor, timestep: float) -> torch.Tensor:
        probe = torch.tensor([timestep, self.jump * (self.calls // 4)], dtype=torch.float64)
        self.calls += 1
        return x + self.deep(probe)


def probed_outputs(jump: float, act) -> list[torch.Tensor]:
    net, x = ProbedNet(1, jump), torch.zeros(5, dtype=torch.float64)
    group = Group({"deep": PRODUCE}, Static(lambda n: lambda step: step % 4 == 0))
    with Session(net, [group], act=act):
        return [net(x, t) for t in TIMES]


def same(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(xs, ys, strict=True))


def test_the_fallback_keeps_a_forecast_that_the_shallow_feature_confirms():
    """A probe that moves linearly in t (no wobble) extrapolates exactly: the forecast stands."""
    forecast = probed_outputs(0.0, Forecast(order=2))
    assert same(probed_outputs(0.0, Forecast(2, fallback=True)), forecast)
    assert not same(forecast, probed_outputs(0.0, Forecast(order=1)))


def test_the_fallback_replays_where_the_shallow_feature_contradicts_the_forecast():
    """A probe that jumps at full calls extrapolates worse than it replays: the cached calls replay."""
    replay = probed_outputs(1e4, Forecast(order=1))
    assert same(probed_outputs(1e4, Forecast(2, fallback=True)), replay)
    assert not same(probed_outputs(1e4, Forecast(order=2)), replay)


def test_the_fallback_is_a_forecast_option_and_keeps_its_probes():
    with pytest.raises(ValueError, match="fallback is only used with reuse='forecast'"):
        DeepCacheConfig(interval=3, fallback=True)
    with pytest.raises(ValueError, match="fallback must be True or False"):
        DeepCacheConfig(interval=3, reuse="forecast", fallback="yes")
    net, x = ProbedNet(1, 0.0), torch.zeros(5, dtype=torch.float64)
    group = Group({"deep": PRODUCE}, Static(lambda n: lambda step: step % 2 == 0))
    with Session(net, [group], act=Forecast(2, fallback=True)) as session:
        _ = [net(x, t) for t in TIMES]
        probe = torch.zeros(2, dtype=torch.float64)
        assert session.cache_nbytes == 2 * (x.nbytes + probe.nbytes) + probe.nbytes  # + the last probe


# ----------------------------------------------------------------------------- the solver's variable
def test_noise_time_is_the_timesteps_sigma_or_minus_its_log_between_discrete_timesteps():
    sigmas = [0.5, 2.0, 8.0]
    assert noise_time("sigma", 1, sigmas) == 2.0
    assert noise_time("sigma", 0.5, sigmas) == pytest.approx(1.0)  # geometric mean: log sigma is linear
    assert noise_time("lambda", 1.25, sigmas) == pytest.approx(-math.log(2.0 * 4.0**0.25))
    assert noise_time("sigma", 2, sigmas) == 8.0 and noise_time("sigma", 5, sigmas) == 8.0  # clamped
    with pytest.raises(ValueError, match="'sigma' or 'lambda'"):
        noise_time("timestep", 1, sigmas)


def test_the_clock_reads_noise_levels_from_the_schedulers_alphas_cumprod():
    scheduler = diffusers.DPMSolverMultistepScheduler()
    clock = StepClock(SimpleNamespace(scheduler=scheduler))
    clock.start()
    alphas = scheduler.alphas_cumprod.double()
    assert clock.sigmas() == pytest.approx(((1 - alphas) / alphas).sqrt().tolist(), rel=1e-12)
    clock.detach()
    assert StepClock().sigmas() is None  # a bare model's: unknown


#: A VP noise schedule (SD's scaled-linear betas) and 12 trailing timesteps of it
SCALED_LINEAR = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
LEVELS = ((1 - SCALED_LINEAR.alphas_cumprod.double()) / SCALED_LINEAR.alphas_cumprod.double()).sqrt()
TRAILING = [round(999 - 1000 * s / STEPS) for s in range(STEPS)]


class InVariable(nn.Module):
    """A shallow path around a deep module that is linear in ``variable`` of the call's timestep."""

    def __init__(self, variable: str):
        super().__init__()
        self.variable, self.v = variable, torch.linspace(-1, 1, 5, dtype=torch.float64)
        self.deep = nn.Identity()

    def forward(self, x: torch.Tensor, timestep: float) -> torch.Tensor:
        return x + self.deep(self.v * noise_time(self.variable, timestep, LEVELS.tolist()))


def errors_in(variable: str, time: str) -> float:
    """Max error of the settled cached calls (every 3rd call full, order 2) of a timed run."""
    net, x = InVariable(variable), torch.zeros(5, dtype=torch.float64)
    exact = [net(x, t) for t in TRAILING]
    group = Group({"deep": PRODUCE}, Static(lambda n: lambda step: step % 3 == 0))
    session = Session(net, [group], act=Forecast(2, time))
    with session, cachediff.sampling_run(session, TRAILING, noise_levels=LEVELS):
        got = [net(x, t) for t in TRAILING]
    assert session.stats.pattern == "FCC" * 4
    return max(float((g - e).abs().max() / e.abs().max()) for g, e in zip(got[3:], exact[3:], strict=True))


@pytest.mark.parametrize("variable", ["sigma", "lambda"])
def test_a_forecast_in_the_noise_level_is_exact_for_a_feature_linear_in_it(variable):
    """Trailing timesteps are evenly spaced in t, not in sigma or lambda: only the forecast in the
    feature's own variable extrapolates it exactly."""
    assert errors_in(variable, variable) < 1e-12
    assert errors_in(variable, "timestep") > 1e-3
    other = {"sigma": "lambda", "lambda": "sigma"}[variable]
    assert errors_in(variable, other) > 1e-3


def test_a_forecast_in_the_noise_level_needs_noise_levels():
    net, x = InVariable("sigma"), torch.zeros(5, dtype=torch.float64)
    group = Group({"deep": PRODUCE}, Static(lambda n: lambda step: step % 3 == 0))
    with Session(net, [group], act=Forecast(2, "sigma")), pytest.raises(ValueError, match="noise level"):
        net(x, 999)
    with pytest.raises(ValueError, match="time must be one of"):
        DeepCacheConfig(interval=3, reuse="forecast", time="log")


@pytest.mark.parametrize("time", ["sigma", "lambda"])
def test_a_pipeline_forecasts_in_the_noise_level_of_its_scheduler(time):
    pipe, cond = forecast_pipe("DPMSolverMultistepScheduler")
    base = sample(pipe, cond, steps=8)
    with cachediff.deepcache(pipe, interval=1, branch=1, reuse="forecast", time=time):
        assert torch.equal(sample(pipe, cond, steps=8), base)
    outs = {}
    for variable in ("timestep", time):
        with cachediff.deepcache(pipe, interval=3, branch=1, reuse="forecast", time=variable) as engine:
            outs[variable] = sample(pipe, cond, steps=8)
        assert engine.stats.pattern == "FCCFCCFC"
    assert torch.isfinite(outs[time]).all() and not torch.equal(outs[time], outs["timestep"])


# ----------------------------------------------------------------------------- the shallow feature's fit
class Affine(nn.Module):
    """A deep module affine in its input h (the group's probe): A h + b."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.a, self.b = (
            torch.randn(6, 6, generator=gen, dtype=torch.float64),
            torch.ones(6, dtype=torch.float64),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.a.T + self.b


class Clocked(Affine):
    """An affine deep module whose output also moves linearly in the timestep, which its input (the
    probe) does not show: A h + b + (t / 1000) v."""

    def forward(self, h: torch.Tensor, t: float = 0.0) -> torch.Tensor:
        return super().forward(h) + t / 1000 * torch.linspace(1, 2, 6, dtype=torch.float64)


class Curved(nn.Module):
    """The deep module's input moves along ``directions`` curves of the timestep no polynomial follows
    (sin, exp), at a per-sample rate: in a plane (two directions) or along a line (one). With
    ``clocked``, the deep module's output also moves linearly in the timestep."""

    def __init__(self, directions: int, clocked: bool = False):
        super().__init__()
        self.deep, self.directions, self.clocked = (Clocked() if clocked else Affine()), directions, clocked
        self.w = torch.eye(6, dtype=torch.float64)[:2]
        self.rate = torch.tensor([[1.0], [2.5]], dtype=torch.float64)  # two samples

    def forward(self, x: torch.Tensor, timestep: float) -> torch.Tensor:
        s = self.rate * timestep / 1000
        h = x + torch.sin(3 * s) * self.w[0]
        if self.directions == 2:
            h = h + torch.exp(s) * self.w[1]
        return x + (self.deep(h, timestep) if self.clocked else self.deep(h))


def fitted_errors(directions: int, order: int, time: str, interval: int = 3, clocked: bool = False) -> float:
    """Max relative error of the settled cached calls against the uncached model."""
    net, x = (
        Curved(directions, clocked),
        torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
    )
    exact = [net(x, t) for t in TIMES]
    group = Group({"deep": PRODUCE}, Static(lambda n: lambda step: step % interval == 0))
    with Session(net, [group], act=Forecast(order, time)) as session:
        got = [net(x, t) for t in TIMES]
    assert session.stats.n_full == len(range(0, STEPS, interval))
    settled = range((order - 1) * interval, STEPS)
    return max(float((got[i] - exact[i]).abs().max() / exact[i].abs().max()) for i in settled)


@pytest.mark.parametrize("directions", [1, 2])
def test_the_shallow_fit_is_exact_where_the_deep_feature_is_affine_in_the_shallow_one(directions):
    """The deep feature is affine in the probe, whose path is a curve of the timestep: k kept features
    span the probe's path through k - 1 directions, so the fit of order directions + 1 forecasts
    exactly, per sample at its own rate; extrapolating in the timestep does not."""
    order = directions + 1
    assert fitted_errors(directions, order, "shallow") < 1e-9
    assert fitted_errors(directions, order, "timestep") > 1e-3
    if directions == 2:
        assert fitted_errors(directions, 2, "shallow") > 1e-3  # one direction of a plane: not enough


def test_the_anchored_fit_is_exact_where_the_deep_feature_also_moves_linearly_in_time():
    """Affine in the probe plus linear in t (which the probe does not show): three kept points, one
    constraint for t, one fitted direction of the probe: exact; the pure fit matches the probe but
    not t, the timestep's parabola neither; at order 2 the anchored fit is the timestep's line."""
    assert fitted_errors(1, 3, "anchored", clocked=True) < 1e-9
    assert fitted_errors(1, 3, "shallow", clocked=True) > 1e-3
    assert fitted_errors(1, 3, "timestep", clocked=True) > 1e-3
    assert fitted_errors(1, 2, "anchored") == fitted_errors(1, 2, "timestep")


def test_the_shallow_fit_replays_before_two_full_calls_and_keeps_its_probes():
    net, x = Curved(1), torch.zeros(2, 6, dtype=torch.float64)
    group = Group({"deep": PRODUCE}, Static(lambda n: lambda step: step % 4 == 0))
    with Session(net, [group], act=Forecast(2, "shallow")) as session:
        got = [net(x, t) for t in TIMES]
        assert session.cache_nbytes == 2 * (2 * x.nbytes) + x.nbytes  # features and probes; + the last
    assert all(torch.equal(got[i], got[0]) for i in (1, 2, 3))  # one full call kept: a replay
    assert not torch.equal(got[5], got[4])
    exact = [net(x, t) for t in TIMES]
    every = Group({"deep": PRODUCE}, Static(lambda n: lambda step: True))
    with Session(net, [every], act=Forecast(2, "shallow")):  # interval 1: bit-exact
        assert all(torch.equal(net(x, t), e) for t, e in zip(TIMES, exact, strict=True))


# ----------------------------------------------------------------------------- CUDA graphs' memory pool
class Pooled(nn.Module):
    """As a CUDA graph's replay does: results written into one buffer that the next call overwrites."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module, self.pool = module, None

    def forward(self, *args):
        out = self.module(*args)
        self.pool = torch.empty_like(out) if self.pool is None else self.pool
        return self.pool.copy_(out)


class PooledNet(Net):
    """``Net`` whose deep feature and output live in pools, as in a denoiser run as CUDA graphs."""

    def __init__(self, degree: int):
        super().__init__(degree)
        self.deep, self.out = Pooled(self.deep), Pooled(nn.Identity())

    def forward(self, x: torch.Tensor, timestep: float) -> torch.Tensor:
        return self.out(super().forward(x, timestep))


def pooled_outputs(graphs: bool) -> list[torch.Tensor]:
    net, x = PooledNet(1), torch.zeros(5, dtype=torch.float64)
    if graphs:
        setattr(net, CUDA_GRAPHS, True)  # as compile_denoiser(mode="reduce-overhead") marks it
    group = Group({"deep": PRODUCE}, Static(lambda n: lambda step: step % 4 == 0))
    with Session(net, [group], act=Forecast(2)):
        return [net(x, t) for t in TIMES]


def test_under_cuda_graphs_what_outlives_a_call_is_copied_out_of_the_pool():
    """The forecast reads the feature of the full call before last, which the last full call's replay
    overwrote in the pool; a scheduler keeps outputs of earlier calls (PLMS: four)."""
    net, x = Net(1), torch.zeros(5, dtype=torch.float64)
    with Session(
        net, [Group({"deep": PRODUCE}, Static(lambda n: lambda step: step % 4 == 0))], act=Forecast(2)
    ):
        expected = [net(x, t) for t in TIMES]
    assert same(pooled_outputs(graphs=True), expected)
    unsafe = pooled_outputs(graphs=False)
    assert all(out is unsafe[0] for out in unsafe)  # every output is the pool: the last call's value
    assert not same(unsafe, expected)


def test_compiling_into_cuda_graphs_marks_the_denoiser_and_uncompiling_clears_it():
    net = Net(1)
    assert not runs_as_cuda_graphs(cachediff.compile_denoiser(net, backend="eager"))
    cachediff.uncompile(net)
    assert runs_as_cuda_graphs(cachediff.compile_denoiser(net, mode="reduce-overhead"))  # compiles lazily
    assert not runs_as_cuda_graphs(cachediff.uncompile(net))
