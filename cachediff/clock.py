"""The step clock: which denoising step and which call within it a model call belongs to.

Caching decisions are made per *step* of a sampling run, never from the timestep value. The clock
counts steps in one of three modes (``StepClock.mode``):

- ``SCHEDULER``: the pipeline's diffusers scheduler ends each step;
- ``CALLS``: no scheduler, so every model call is one step;
- ``TIMED``: a sampling run without a diffusers scheduler whose step times are known, each call
  placed by its timestep argument.

With a pipeline (``SCHEDULER``), steps are counted by ``scheduler.step`` calls (so PLMS and Heun,
which evaluate one timestep twice, count two steps; ``step_pred`` for a predictor-corrector sampler)
and ``scheduler.set_timesteps`` starts a new run; several model calls within one step (separate
cond/uncond passes, a corrector's call) get their own *slot*. Without a pipeline every model call is
one step (``CALLS``). Used by the DeepCache engine and the module-level cache alike.

Without a diffusers scheduler (the CompVis samplers, k-diffusion's), a *timed run* (``TIMED``) gives the
run's step times once (``follow``; ``cachediff.sampling``): each call is placed by its timestep
argument (``TimedRun``): the first evaluation of step i is at the run's time i, a sampler's second
evaluation within a step (Heun, DPM2, DPM++ SDE) at a time from its step's to the next one's (or
short of the step after that: a timestep rounded to the model's discrete ones, as ComfyUI's are, may
fall just past the next step's time),
repeated calls at one time (separate cond/uncond passes) in slots of their own, and a call at the
run's first time after the run has begun starts a fresh run. A call that fits nowhere is not placed
(``placed`` is False): it runs as the original model and keeps nothing.

A run belongs to the thread that started it (its ``set_timesteps``; without a scheduler, the thread
of the last call). A call from another thread while that run goes on is not the run's: ``begin``
returns ``None`` and the caller runs it as the original model, keeping nothing, and that thread's
``scheduler.step`` does not count. So one accelerated pipeline called from two threads at once never
mixes their features: each output is correct, the run that started last is the one accelerated.

Example:
    >>> clock = StepClock()
    >>> for _ in range(3):
    ...     print(clock.begin())
    ...     clock.end()
    (0, 0)
    (1, 0)
    (2, 0)
    >>> clock.mode  # no pipeline, so no scheduler: every call is a step
    'calls'
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .hooks import Hooks

#: The clock's modes (see the module's docstring).
SCHEDULER, CALLS, TIMED = "scheduler", "calls", "timed"
#: What a timed run's schedule counts: the sampler's steps, or each of its model evaluations.
STEP, EVALUATION = "step", "evaluation"


class StepClock:
    """Counts steps and slots of one run.

    Args:
        pipeline: optional owner of a ``.scheduler`` (looked up at every call, so a swapped-in
            scheduler is followed and starts a new run).
        on_new_run: called with the run length (or ``None`` if unknown) whenever a run starts.
    """

    def __init__(self, pipeline=None, on_new_run: Callable[[int | None], None] | None = None):
        self.pipeline, self.on_new_run = pipeline, on_new_run
        self._hooks = Hooks()
        self._scheduler = None
        self.step = self.slot = 0
        self.num_steps: int | None = None
        self._times: list[float] | None = None
        self._sigmas: list[float] | None = None  # the noise level of each discrete timestep
        self.lock = threading.RLock()  # held while a run starts and while a call is placed in it
        self.owner, self._busy = threading.get_ident(), False
        self.timed: TimedRun | None = None
        self.placed = True  # whether the call in progress was placed in the run (timed runs)
        self._fresh = False  # a timed run ended: the next call starts a new run

    def reset(self, num_steps: int | None = None) -> None:
        """Start a new run at step 0 (``num_steps`` is the run length, if known), owned by the
        calling thread."""
        with self.lock:
            self.step = self.slot = 0
            self.num_steps, self._times = num_steps, None
            if self.timed is None:
                self._sigmas = None
            self.owner, self._busy, self._fresh = threading.get_ident(), False, False
            if self.timed is not None:
                self.timed = TimedRun(self.timed.times, self.timed.evaluations, self.timed.unit)
            if self.on_new_run is not None:
                self.on_new_run(num_steps)

    @property
    def mode(self) -> str:
        """How steps are counted now: ``TIMED``, ``SCHEDULER`` or ``CALLS``."""
        if self.timed is not None:
            return TIMED
        return CALLS if self._scheduler is None else SCHEDULER

    def start(self, num_steps: int | None = None) -> None:
        """Start a new run and follow the pipeline's scheduler from now on, so that a ``step`` looked
        up before the first model call (``scheduler.step(unet(...))``) is counted too."""
        if self.mode == TIMED:  # the timed run decides the steps, not a scheduler
            self.reset(self.timed.length)
            return
        self.reset(num_steps)
        self._follow_scheduler()

    def follow(
        self,
        times: Sequence[float],
        evaluations: Callable[[int, int], int],
        unit: str = STEP,
        noise_levels: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Start a timed run: step i's first evaluation is at ``times[i]`` (in the model's timestep
        argument, descending), and step i of n makes ``evaluations(i, n)`` evaluations. ``unit``: what
        the schedule counts, the sampler's steps (``STEP``) or its evaluations (``EVALUATION``: every
        evaluation its own step, so that a schedule spreads full evaluations over a multi-evaluation
        sampler's steps). ``noise_levels``: the noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) of each
        discrete timestep 0, 1, ... (a forecast in "sigma" or "lambda" needs them)."""
        if unit not in (STEP, EVALUATION):
            raise ValueError(f"unit must be {STEP!r} or {EVALUATION!r}, got {unit!r}")
        times = [float(t) for t in times]
        if not times or any(b >= a for a, b in zip(times, times[1:], strict=False)):
            raise ValueError(f"a sampling run's times must be a non-empty, decreasing sequence, got {times}")
        with self.lock:
            self.detach()
            self.timed = TimedRun(times, evaluations, unit)
            levels = None if noise_levels is None else torch.as_tensor(noise_levels, dtype=torch.float64)
            self._sigmas = None if levels is None else levels.tolist()
            self.reset(self.timed.length)

    def unfollow(self) -> None:
        """End the timed run: the next call starts a new run that counts calls (or follows the
        pipeline's scheduler); until then the session's statistics describe the timed run."""
        with self.lock:
            self.timed, self._fresh = None, True

    def begin(self, call_time: Callable[[], float | None] = lambda: None) -> tuple[int, int] | None:
        """Enter a model call: returns ``(step, slot)``, or ``None`` for a call from another thread
        than the run's (see the module's docstring), which ``end`` then ignores. In a timed run the
        call is placed by ``call_time()``, its timestep (``placed`` says whether it could be)."""
        with self.lock:
            if self._fresh:
                self._fresh = False
                self.reset()
            if self.mode != TIMED:
                self._follow_scheduler()
            me = threading.get_ident()
            if self.mode == CALLS and not self._busy:  # no run boundaries: the caller's run
                self.owner = me
            if self.owner != me:
                return None
            self._busy, self.placed = True, True
            if self.mode == TIMED:
                self._place(call_time())
            return self.step, self.slot

    def _place(self, t: float | None) -> None:
        where = None if t is None else self.timed.place(t)
        self.placed = where is not None
        if not self.placed and not self.timed.warned:
            self.timed.warned = True
            warnings.warn(
                f"a model call at timestep {t} fits no step of the sampling run: such calls run uncached "
                "(k-diffusion's Euler and Heun with s_churn > 0 evaluate at sigma_hat; give s_churn=0 to "
                "accelerate them)",
                stacklevel=4,
            )
        if where == "restart":
            self.reset(self.timed.length)
            where = self.timed.place(t)
        if where == "step" or (where == "second" and self.timed.unit == EVALUATION):
            self.step, self.slot = self.timed.index, 0

    def beyond_run(self, step: int) -> bool:
        """Whether a call at ``step`` is no part of the run: past the end of the followed scheduler's
        run (another pipeline sharing the model, with a scheduler of its own), or a call of a timed
        run that could not be placed."""
        if self.mode == TIMED:
            return not self.placed
        return self.mode == SCHEDULER and self.num_steps is not None and step >= self.num_steps

    def end(self) -> None:
        """Leave a model call; without a scheduler, each call ends its step. Nothing for a call
        whose run another thread has taken over meanwhile."""
        with self.lock:
            if self.owner == threading.get_ident():
                self._busy = False
                if self.mode == TIMED:  # steps come from the call times
                    self.slot += self.placed
                    return
                self.slot += 1
                if self.mode == CALLS:
                    self.advance()

    def advance(self) -> None:
        """End the current step (called after each ``scheduler.step``; not counted from another
        thread than the run's)."""
        with self.lock:
            if self.owner == threading.get_ident():
                self.step += 1
                self.slot = 0

    def time(self, step: int) -> float | None:
        """The scheduler's timestep of ``step`` (``None`` without a scheduler or past its timesteps),
        from a host copy of ``scheduler.timesteps`` made once per run."""
        if self.mode == TIMED:
            if self.timed.unit == EVALUATION:
                return None  # a further evaluation's time is the sampler's own
            return self.timed.times[step] if step < len(self.timed.times) else None
        if self._times is None:
            timesteps = getattr(self._scheduler, "timesteps", None)
            self._times = [] if timesteps is None else [float(t) for t in torch.as_tensor(timesteps).tolist()]
        return self._times[step] if step < len(self._times) else None

    def call_time(self, step: int, args: tuple, kwargs: dict, variable: str) -> float:
        """A call's time in ``variable``: "step", the step index; "timestep", the call's
        ``timestep`` argument where that is on the host (a number or a CPU tensor: no
        synchronisation), else the scheduler's timestep of the step, else the step index; "sigma" or
        "lambda", that timestep's noise level (``noise_time``)."""
        if variable == "step":
            return float(step)
        t = call_timestep(args, kwargs)
        t = self.time(step) if t is None else t
        if variable == "timestep":
            return float(step) if t is None else t
        sigmas = self.sigmas()
        if t is None or sigmas is None:
            raise ValueError(
                f"a forecast in {variable!r} needs the noise level of each call's timestep: run the model "
                "in a pipeline whose scheduler has alphas_cumprod, or give noise_levels to sampling_run"
            )
        return noise_time(variable, t, sigmas)

    def sigmas(self) -> list[float] | None:
        """The noise level of each discrete timestep: the timed run's, or from the followed
        scheduler's ``alphas_cumprod`` (a host copy made once per run); ``None`` if unknown."""
        if self._sigmas is None and self.mode == SCHEDULER:
            alphas = getattr(self._scheduler, "alphas_cumprod", None)
            if alphas is not None:
                alphas = torch.as_tensor(alphas, dtype=torch.float64, device="cpu")
                self._sigmas = ((1 - alphas) / alphas).sqrt().tolist()
        return self._sigmas

    def detach(self) -> None:
        """Stop following the scheduler (restores its methods)."""
        self._hooks.remove_all()
        self._scheduler = None

    def _follow_scheduler(self) -> None:
        current = getattr(self.pipeline, "scheduler", None)
        if current is self._scheduler:
            return
        self.detach()
        if current is not None:
            step = step_method(current)  # refuses an unknown scheduler before anything is wrapped
            self._scheduler = current
            self._hooks.wrap(current, _after(lambda: self.reset(self._scheduler_steps())), "set_timesteps")
            self._hooks.wrap(current, _after(self.advance), step)
        self.reset(self._scheduler_steps())

    def _scheduler_steps(self) -> int | None:
        timesteps = getattr(self._scheduler, "timesteps", None)
        return len(timesteps) if timesteps is not None else None


@dataclass
class TimedRun:
    """Places the calls of a sampling run by their timestep (see the module's docstring).

    Example (Heun over 3 steps, one call per evaluation: the second evaluation of a step is at the
    next step's time, where that step's first evaluation follows):
        >>> run = TimedRun([900.0, 600.0, 300.0], lambda step, n: 1 if step == n - 1 else 2)
        >>> [(run.place(t), run.step) for t in (900, 600, 600, 300, 300, 900)]
        [('step', 0), ('second', 0), ('step', 1), ('second', 1), ('step', 2), ('restart', 2)]
    """

    times: list[float]
    evaluations: Callable[[int, int], int]
    unit: str = STEP
    step: int = -1
    evaluation: int = -1  # evaluations of the run so far, less one
    seen: int = 0  # evaluations of the current step so far
    time: float | None = None  # the current evaluation's time
    calls: int = 0  # calls of the current evaluation so far
    per_evaluation: int | None = None  # calls per evaluation: learnt from the run's first one
    warned: bool = False  # a call that fits no step has been reported

    def place(self, t: float) -> str | None:
        """Where a call at time ``t`` goes: "same" (another call of the current evaluation),
        "second" (a further evaluation of the current step), "step" (the first evaluation of step
        ``self.step``), "restart" (the run's first time again: a new run) or ``None`` (nowhere)."""
        if self.time is not None and _close(t, self.time):
            if self.per_evaluation is None or self.calls < self.per_evaluation:
                self.calls += 1
                return "same"
        if self.time is not None and self.per_evaluation is None:
            self.per_evaluation = self.calls
        n, s = len(self.times), self.step
        if 0 <= s < n - 1 and self.seen < self.evaluations(s, n):
            after_next = self.times[s + 2] if s + 2 < n else -math.inf
            if after_next < t <= self.times[s] and not _close(t, after_next) or _close(t, self.times[s + 1]):
                return self._evaluation(t, "second")
        later = [k for k in range(s + 1, n) if _close(t, self.times[k])]
        if later:
            self.step, self.seen = later[0], 0
            return self._evaluation(t, "step")
        if s >= 0 and _close(t, self.times[0]):
            return "restart"
        return None

    def _evaluation(self, t: float, where: str) -> str:
        self.time, self.calls, self.seen, self.evaluation = t, 1, self.seen + 1, self.evaluation + 1
        return where

    @property
    def length(self) -> int:
        """The run's length in its unit: steps, or evaluations."""
        n = len(self.times)
        return n if self.unit == STEP else sum(self.evaluations(s, n) for s in range(n))

    @property
    def index(self) -> int:
        """The current step's index in the run's unit."""
        return self.step if self.unit == STEP else self.evaluation


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4)


#: Scheduler methods that end a denoising step, in order of preference: ``step``, or the predictor
#: of a predictor-corrector sampler (ScoreSdeVeScheduler, whose corrector calls the model within
#: the step, in a slot of its own).
STEP_METHODS = ("step", "step_pred")


def noise_time(variable: str, t: float, sigmas: Sequence[float]) -> float:
    """Timestep ``t``'s noise level, ``sigmas`` given at the discrete timesteps 0, 1, ... and log sigma
    interpolated linearly between them (as k-diffusion's ``t_to_sigma``): "sigma" = sqrt((1 -
    alpha_bar) / alpha_bar), the variable of Euler and the k-diffusion samplers, or "lambda" = log
    (alpha / sigma) = -log sigma, DPM-Solver's (half the log signal-to-noise ratio).

    Example:
        >>> sigmas = [0.1, 1.0, 10.0]
        >>> noise_time("sigma", 1.5, sigmas), noise_time("lambda", 2, sigmas) == -math.log(10)
        (3.1622776601683795, True)
    """
    if variable not in ("sigma", "lambda"):
        raise ValueError(f"a noise level is 'sigma' or 'lambda', got {variable!r}")
    t = min(max(float(t), 0.0), len(sigmas) - 1.0)
    low, w = int(t), t - int(t)
    sigma = sigmas[low] if w == 0 else sigmas[low] ** (1 - w) * sigmas[low + 1] ** w
    return sigma if variable == "sigma" else -math.log(sigma)


def call_timestep(args: tuple, kwargs: dict, anywhere: bool = False) -> float | None:
    """A call's timestep argument (the second positional one, or ``timestep`` / ``timesteps``) as a
    host float: a number, or the first element of a tensor on the CPU, or with ``anywhere`` on any
    device (a host synchronisation there: a timed run places each call by it)."""
    t = args[1] if len(args) > 1 else kwargs.get("timestep", kwargs.get("timesteps"))
    if isinstance(t, torch.Tensor) and t.numel() > 0 and (anywhere or t.device.type == "cpu"):
        t = t.reshape(-1)[0].item()
    return float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def step_method(scheduler) -> str:
    """The name of the scheduler's method that ends a step; a clear error for one that has none.

    Example:
        >>> from diffusers import DDIMScheduler, ScoreSdeVeScheduler
        >>> step_method(DDIMScheduler()), step_method(ScoreSdeVeScheduler())
        ('step', 'step_pred')
    """
    for name in STEP_METHODS:
        if callable(getattr(scheduler, name, None)):
            return name
    raise TypeError(
        f"{type(scheduler).__name__} has no method that ends a denoising step ({' or '.join(STEP_METHODS)}), "
        "so cachediff cannot count its steps"
    )


def _after(callback: Callable[[], None]) -> Callable[[Callable], Callable]:
    def factory(original: Callable) -> Callable:
        def method(*args, **kwargs):
            out = original(*args, **kwargs)
            callback()
            return out

        return method

    return factory
