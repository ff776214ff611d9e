"""The step clock: which denoising step and which call within it a model call belongs to.

Caching decisions are made per *step* of a sampling run, never from the timestep value. With a
pipeline, steps are counted by ``scheduler.step`` calls (so PLMS and Heun, which evaluate one timestep
twice, count two steps; ``step_pred`` for a predictor-corrector sampler) and
``scheduler.set_timesteps`` starts a new run; several model calls within one step (separate
cond/uncond passes, a corrector's call) get their own *slot*. Without a pipeline every model call is
one step. Used by the DeepCache engine and the module-level cache alike.

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
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from .hooks import Hooks


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
        self.lock = threading.RLock()  # held while a run starts and while a call is placed in it
        self.owner, self._busy = threading.get_ident(), False

    def reset(self, num_steps: int | None = None) -> None:
        """Start a new run at step 0 (``num_steps`` is the run length, if known), owned by the
        calling thread."""
        with self.lock:
            self.step = self.slot = 0
            self.num_steps, self._times = num_steps, None
            self.owner, self._busy = threading.get_ident(), False
            if self.on_new_run is not None:
                self.on_new_run(num_steps)

    def start(self, num_steps: int | None = None) -> None:
        """Start a new run and follow the pipeline's scheduler from now on, so that a ``step`` looked
        up before the first model call (``scheduler.step(unet(...))``) is counted too."""
        self.reset(num_steps)
        self._follow_scheduler()

    def begin(self) -> tuple[int, int] | None:
        """Enter a model call: returns ``(step, slot)``, or ``None`` for a call from another thread
        than the run's (see the module's docstring), which ``end`` then ignores."""
        with self.lock:
            self._follow_scheduler()
            me = threading.get_ident()
            if self._scheduler is None and not self._busy:  # no run boundaries: the caller's run
                self.owner = me
            if self.owner != me:
                return None
            self._busy = True
            return self.step, self.slot

    def beyond_run(self, step: int) -> bool:
        """Whether a call at ``step`` lies past the end of the followed scheduler's run: it is not
        part of that run (another pipeline sharing the model, with a scheduler of its own)."""
        return self._scheduler is not None and self.num_steps is not None and step >= self.num_steps

    def end(self) -> None:
        """Leave a model call; without a scheduler, each call ends its step. Nothing for a call
        whose run another thread has taken over meanwhile."""
        with self.lock:
            if self.owner == threading.get_ident():
                self._busy = False
                self.slot += 1
                if self._scheduler is None:
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
        if self._times is None:
            timesteps = getattr(self._scheduler, "timesteps", None)
            self._times = [] if timesteps is None else [float(t) for t in torch.as_tensor(timesteps).tolist()]
        return self._times[step] if step < len(self._times) else None

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


#: Scheduler methods that end a denoising step, in order of preference: ``step``, or the predictor
#: of a predictor-corrector sampler (ScoreSdeVeScheduler, whose corrector calls the model within
#: the step, in a slot of its own).
STEP_METHODS = ("step", "step_pred")


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
