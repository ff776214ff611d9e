"""Layer 1: the removable method wrappers (``cachediff.hooks``) on copies and signatures."""

from __future__ import annotations


def test_a_deep_copy_of_a_hooked_scheduler_runs_its_own_unhooked_methods():
    import copy
    import inspect

    from diffusers import DDIMScheduler

    from cachediff.hooks import Hooks

    scheduler, calls = DDIMScheduler(), []
    hooks = Hooks()
    hooks.wrap(
        scheduler, lambda original: lambda *a, **k: calls.append(1) or original(*a, **k), "set_timesteps"
    )
    clone = copy.deepcopy(scheduler)  # as Text2Video-Zero does inside its __call__
    clone.set_timesteps(7)
    assert calls == [] and len(clone.timesteps) == 7 and scheduler.timesteps is not clone.timesteps
    scheduler.set_timesteps(5)
    assert calls == [1] and len(scheduler.timesteps) == 5 and len(clone.timesteps) == 7
    assert "eta" in inspect.signature(scheduler.step).parameters  # unwrapped
    hooks.wrap(scheduler, lambda original: original, "step")  # diffusers inspects step's parameters
    assert list(inspect.signature(scheduler.step).parameters)[:3] == ["model_output", "timestep", "sample"]
    hooks.remove_all()
    assert "set_timesteps" not in vars(scheduler) and "step" not in vars(scheduler)


def test_wrapping_a_copy_does_not_nest_on_its_leftover_and_removal_deletes_it():
    import copy
    import gc
    import weakref

    from diffusers import DDIMScheduler

    from cachediff.hooks import Hooks, clean

    class Engine:  # stands for the session a wrapper's closure holds
        def factory(self, original):
            return original

    engine, scheduler, hooks = Engine(), DDIMScheduler(), Hooks()
    hooks.wrap(scheduler, engine.factory, "step")
    clone = copy.deepcopy(scheduler)  # carries an inert leftover of the wrapper
    hooks.remove_all()
    alive = weakref.ref(engine)
    del engine
    gc.collect()
    assert alive() is None  # the copy's leftover holds nothing of cachediff's state
    hooks.wrap(clone, lambda original: original, "step")
    hooks.remove_all()
    assert "step" not in vars(clone)  # restored to what was beneath the leftover: nothing
    again = copy.deepcopy(scheduler)
    assert clean([again]) == 0  # a copy of the unwrapped object has no leftover
    hooks.wrap(scheduler, lambda original: original, "step")
    copied = copy.deepcopy(scheduler)
    assert clean([scheduler]) == 0 and clean([copied]) == 1 and "step" not in vars(copied)
    hooks.remove_all()
