"""``DeepCacheSDHelper``: a drop-in for the official ``from DeepCache import DeepCacheSDHelper``.

Same constructor and methods, backed by the hook engine: ``skip_mode='non-uniform'`` works, the
step is counted by the engine (correct with PLMS and Heun, keyword timesteps, img2img strengths),
and the cache holds one feature instead of every block's output.

Example:
    >>> helper = DeepCacheSDHelper(pipe)  # doctest: +SKIP
    >>> helper.set_params(cache_interval=3, cache_branch_id=0)  # doctest: +SKIP
    >>> helper.enable()  # doctest: +SKIP
    >>> image = pipe("a photo of an astronaut").images[0]  # doctest: +SKIP
    >>> helper.disable()  # doctest: +SKIP
"""

from __future__ import annotations

from .config import DeepCacheConfig
from .engine import DeepCacheEngine

_SKIP_MODES = ("uniform", "non-uniform")  # the official names, which are also our schedule names


class DeepCacheSDHelper:
    """The official helper's API on a diffusers pipeline with a ``.unet``.

    Args:
        pipe: the pipeline to accelerate (SD 1.x/2.x, SDXL, SVD, inpainting, img2img, ControlNet, ...).
    """

    def __init__(self, pipe=None):
        self.pipe = pipe
        self.params: dict | None = None
        self.engine: DeepCacheEngine | None = None

    def set_params(
        self,
        cache_interval: int = 1,
        cache_branch_id: int = 0,
        skip_mode: str = "uniform",
        center: int = 15,
        pow: float = 1.4,  # noqa: A002 (the official research code's name)
    ) -> None:
        """Choose the cache interval N, the branch id (paper branch = id + 1) and the schedule.

        ``skip_mode`` is 'uniform' or 'non-uniform' (the paper's quadratic schedule around ``center``
        with exponent ``pow``). Takes effect at once, also while enabled.
        """
        if skip_mode not in _SKIP_MODES:
            raise ValueError(f"skip_mode must be one of {', '.join(_SKIP_MODES)}; got {skip_mode!r}")
        config = DeepCacheConfig(
            interval=cache_interval,
            branch=cache_branch_id,
            schedule=skip_mode,
            center=center,
            power=pow,
        )
        self.params = dict(
            cache_interval=cache_interval,
            cache_branch_id=cache_branch_id,
            skip_mode=skip_mode,
            center=center,
            pow=pow,
        )
        if self.engine is not None:
            self.engine.configure(config)
        elif self.pipe is not None:
            self.engine = DeepCacheEngine(_unet_of(self.pipe), config, pipeline=self.pipe)

    def enable(self, pipe=None) -> None:
        """Start caching (harmless if already enabled)."""
        if pipe is not None and pipe is not self.pipe:
            self.disable()
            self.pipe, self.engine = pipe, None
            if self.params is not None:
                self.set_params(**self.params)
        if self.pipe is None:
            raise ValueError("no pipeline: pass one to DeepCacheSDHelper(pipe) or enable(pipe)")
        if self.engine is None:
            raise RuntimeError("call set_params(cache_interval=..., cache_branch_id=...) before enable()")
        self.engine.enable()

    def disable(self) -> None:
        """Stop caching and restore the pipeline's U-Net exactly."""
        if self.engine is not None:
            self.engine.disable()


def _unet_of(pipe):
    unet = getattr(pipe, "unet", None)
    if unet is None:
        raise TypeError(
            f"{type(pipe).__name__} has no .unet; DeepCache accelerates U-Net pipelines. "
            "For transformer pipelines (DiT, PixArt) use the module-level API."
        )
    return unet
