"""Per-architecture branch maps: which modules of a U-Net are *deep* for a given skip branch.

A diffusers U-Net stores one skip tensor per down-side layer: ``conv_in`` first, then every resnet
(with its attention) and every downsampler of every down block. Up-side resnets consume them in
reverse order. *Branch id b* names skip tensor number b (0 = ``conv_in``, the shallowest), exactly as
``cache_branch_id`` does in the official ``DeepCache`` helper for U-Nets with two resnets per down
block (SD 1.x/2.x: 0..11, SDXL: 0..8, SVD: 0..11). The paper numbers branches from 1: paper branch =
b + 1.

The CompVis / Stability ``UNetModel`` (``ldm.modules.diffusionmodules.openaimodel``: LDM, SD 1.x/2.x in
the original scripts, guided-diffusion and SGM share its layout) keeps the same skips as block lists:
input block i produces skip i (block 0 is the input convolution), ``middle_block`` follows, output
block j consumes skip n - 1 - j. So branch b has the same meaning on both families (``SequentialSpec``).

For branch b a cached step runs only the layers that produce skips 0..b and the up-side layers that
consume them; every other layer is *deep*. The deep feature that a cached step reuses is the hidden
state entering the up-side resnet that consumes skip b: the output of the *producer*, the last deep
module before that resnet.

Example:
    >>> from diffusers import UNet2DModel
    >>> unet = UNet2DModel(
    ...     block_out_channels=(32, 64), down_block_types=("DownBlock2D",) * 2,
    ...     up_block_types=("UpBlock2D",) * 2, norm_num_groups=8, sample_size=8)
    >>> num_branches(unet)  # conv_in + 2 blocks x (2 resnets) + 1 downsampler
    6
    >>> plan = branch_plan(unet, 1)
    >>> plan.producer, plan.deep[:2]
    ('up_blocks.1.resnets.0', ('down_blocks.0.resnets.1', 'down_blocks.0.downsamplers.0'))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class UNetSpec:
    """Where a U-Net family keeps its blocks, and the per-layer module lists in run order (the first
    list, the resnets, defines the layers: one skip tensor each on the down side)."""

    down: str = "down_blocks"
    mid: str = "mid_block"
    up: str = "up_blocks"
    layer_lists: tuple[str, ...] = ("resnets", "attentions")
    down_samplers: str = "downsamplers"
    up_samplers: str = "upsamplers"


_UNET = UNetSpec()


@dataclass(frozen=True)
class SequentialSpec:
    """A U-Net whose forward runs block lists and keeps one skip per input block:
    ``h = block(h); hs.append(h)`` over ``input``, then ``middle``, then
    ``h = block(cat(h, hs.pop()))`` over ``output`` (the CompVis / Stability ``UNetModel``).
    ``layers``: the forward runs each block's layers itself, never the block's own ``forward``
    (ComfyUI's copy of the class), so the cut names the layers of the deep blocks."""

    input: str = "input_blocks"
    middle: str = "middle_block"
    output: str = "output_blocks"
    layers: bool = False


#: The supported U-Net classes (by class name, so no diffusers import is needed to read the table).
SPECS: dict[str, UNetSpec | SequentialSpec] = {
    "UNet2DConditionModel": _UNET,  # SD 1.x / 2.x, SDXL, inpainting, img2img, Text2Video-Zero
    "UNet2DModel": _UNET,  # DDPM, unconditional LDM
    "UNetSpatioTemporalConditionModel": _UNET,  # Stable Video Diffusion
    "UNetModel": SequentialSpec(),  # CompVis / Stability: LDM-4-G (paper Table 1), SD's original code
    # ComfyUI's copy (SD 1.x/2.x, SDXL): runs each TimestepEmbedSequential's layers itself
    "comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel": SequentialSpec(layers=True),
}


#: What the README lists as supported, for errors.
SUPPORTED_MODELS = (
    "SD 1.x/2.x, SDXL, inpainting, img2img, Text2Video-Zero, SVD, DDPM, LDM, "
    "the CompVis/Stability UNetModel (and ComfyUI's copy)"
)

#: Blocks of real models whose layout DeepCache's branch map does not cover -> the model, for errors.
KNOWN_LAYOUTS = {
    "KDownBlock2D": "the latent upscaler of StableDiffusionLatentUpscalePipeline, sd-x2-latent-upscaler, "
    "whose up blocks read one skip each",
}


@dataclass(frozen=True)
class BranchPlan:
    """What a cached step skips for one branch: module names (``unet.get_submodule`` paths).

    Attributes:
        branch: the branch id b (paper branch b + 1).
        num_branches: how many branch ids this U-Net has (valid ids: 0 .. num_branches - 1).
        deep: modules that do not run on a cached step (the coarsest names that cover them).
        producer: the deep module whose output is the cached deep feature.
    """

    branch: int
    num_branches: int
    deep: tuple[str, ...]
    producer: str

    @property
    def roles(self) -> dict[str, str]:
        """The cut as the caching core's role map: every deep module skipped, the producer's output kept."""
        return {name: "skip" for name in self.deep} | {self.producer: "produce"}


def spec_for(unet: torch.nn.Module) -> UNetSpec | SequentialSpec:
    """The spec of a U-Net, or a ``TypeError`` naming the supported classes."""
    cls = type(unet)
    spec = SPECS.get(f"{cls.__module__}.{cls.__name__}", SPECS.get(cls.__name__))
    if isinstance(spec, SequentialSpec):
        inputs, outputs = (getattr(unet, name, None) for name in (spec.input, spec.output))
        if inputs is None or outputs is None or len(inputs) != len(outputs):
            raise TypeError(
                f"this {type(unet).__name__} has no {spec.input} and {spec.output} of equal length, as the "
                "CompVis / Stability UNetModel has; supported U-Nets: " + SUPPORTED_MODELS
            )
    if spec is None:
        raise TypeError(
            f"DeepCache does not support {type(unet).__name__}; supported U-Nets: {', '.join(SPECS)}. "
            "For other models (e.g. DiT transformers) use the module-level API."
        )
    return spec


def _layers(block: torch.nn.Module, prefix: str, spec: UNetSpec) -> list[list[str]]:
    """Module names of each layer of a block, in run order (resnet i, then attention i, ...)."""
    if hasattr(block, "skip_conv"):
        raise TypeError(f"{prefix} ({type(block).__name__}) is a skip-sample block; not supported")
    lists = [(name, getattr(block, name, None) or []) for name in spec.layer_lists]
    return [
        [f"{prefix}.{name}.{i}" for name, mods in lists if i < len(mods)] for i in range(len(lists[0][1]))
    ]


def _samplers(block: torch.nn.Module, prefix: str, attr: str) -> list[str]:
    return [f"{prefix}.{attr}.{i}" for i in range(len(getattr(block, attr, None) or []))]


def _side(unet, spec: UNetSpec, side: str) -> list[tuple[str, list[tuple[list[str], int]], list[str]]]:
    """Per block of one side: (block name, [(layer modules, skip index)], sampler modules).

    Down side: the skip index a layer produces. Up side: the skip index a layer consumes.
    """
    blocks = getattr(unet, spec.down if side == "down" else spec.up)
    n_skips = _num_skips(unet, spec)
    skip = 1 if side == "down" else n_skips - 1
    out = []
    for i, block in enumerate(blocks):
        prefix = f"{spec.down if side == 'down' else spec.up}.{i}"
        layers = []
        for mods in _layers(block, prefix, spec):
            layers.append((mods, skip))
            skip += 1 if side == "down" else -1
        samplers = _samplers(block, prefix, spec.down_samplers if side == "down" else spec.up_samplers)
        if side == "down" and samplers:
            layers.append((samplers, skip))
            skip += 1
            samplers = []
        out.append((prefix, layers, samplers))
    if side == "up" and skip != -1:
        types = list(getattr(unet.config, "down_block_types", ())) + list(
            getattr(unet.config, "up_block_types", ())
        )
        known = next((f" ({KNOWN_LAYOUTS[t]})" for t in types if t in KNOWN_LAYOUTS), "")
        blocks = ", ".join(dict.fromkeys(types))
        raise TypeError(
            f"{type(unet).__name__} with blocks {blocks}{known} is not supported: its up blocks consume "
            f"{n_skips - 1 - skip} skips but its down blocks produce {n_skips}; supported are U-Nets "
            f"whose up-side layers consume every skip: {SUPPORTED_MODELS}"
        )
    return out


def _num_skips(unet: torch.nn.Module, spec: UNetSpec) -> int:
    """Skip tensors of the down side: ``conv_in``'s, one per layer, one per downsampling block."""
    layers = spec.layer_lists[0]
    blocks = getattr(unet, spec.down)
    return 1 + sum(len(getattr(b, layers)) + bool(getattr(b, spec.down_samplers, None)) for b in blocks)


def num_branches(unet: torch.nn.Module) -> int:
    """Number of branch ids (skip connections, ``conv_in`` included) of a supported U-Net."""
    spec = spec_for(unet)
    if isinstance(spec, SequentialSpec):
        return len(getattr(unet, spec.input))
    return _num_skips(unet, spec)


def branch_plan(unet: torch.nn.Module, branch: int) -> BranchPlan:
    """The deep modules and the producer of the cached feature for branch id ``branch``.

    Raises:
        TypeError: the U-Net class or its block layout is not supported.
        ValueError: ``branch`` is out of range for this U-Net.
    """
    spec = spec_for(unet)
    n = num_branches(unet)
    if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch < n:
        raise ValueError(
            f"branch must be an integer in 0..{n - 1} for this {type(unet).__name__} "
            f"(paper numbering 1..{n}), got {branch!r}"
        )
    if isinstance(spec, SequentialSpec):
        return _sequential_plan(spec, n, branch, unet)
    deep: list[str] = []
    # Down side: every layer that produces a skip deeper than the branch.
    for name, layers, _ in _side(unet, spec, "down"):
        deep += _coarsest(name, layers, lambda s: s > branch)
    # Mid block, then the up side: every layer that consumes a skip deeper than the branch.
    sequence = [spec.mid] if getattr(unet, spec.mid, None) is not None else []
    deep += sequence
    producer = None
    for name, layers, samplers in _side(unet, spec, "up"):
        if all(s > branch for _, s in layers):
            deep.append(name)
            sequence.append(name)
            continue
        for mods, s in layers:
            if s == branch:
                producer = sequence[-1]
            if s > branch:
                deep += mods
                sequence += mods
        sequence += samplers
    if producer is None:
        raise TypeError(f"no up-side layer of {type(unet).__name__} consumes skip {branch}")
    return BranchPlan(branch=branch, num_branches=n, deep=tuple(deep), producer=producer)


def _sequential_plan(spec: SequentialSpec, n: int, branch: int, unet=None) -> BranchPlan:
    """Input blocks after ``branch``, the middle block and the output blocks before the one that
    consumes skip ``branch`` (output block n - 1 - b) are deep; the last of them is the producer.
    With ``spec.layers``, the layers of those blocks (of ``unet``) are, and the producer's last one.

    Example:
        >>> plan = _sequential_plan(SequentialSpec(), 12, 9)  # SD 1.5's UNetModel, paper branch 10
        >>> plan.deep
        ('input_blocks.10', 'input_blocks.11', 'middle_block', 'output_blocks.0', 'output_blocks.1')
        >>> plan.producer
        'output_blocks.1'
    """
    middle = [spec.middle] if unet is None or getattr(unet, spec.middle, None) is not None else []
    deep = [f"{spec.input}.{i}" for i in range(branch + 1, n)] + middle
    deep += [f"{spec.output}.{j}" for j in range(n - 1 - branch)]
    if spec.layers:
        deep = [f"{block}.{i}" for block in deep for i in range(len(unet.get_submodule(block)))]
    return BranchPlan(branch=branch, num_branches=n, deep=tuple(deep), producer=deep[-1])


def _coarsest(block_name: str, layers, is_deep) -> list[str]:
    """The whole block's name if all its layers are deep, else the names of its deep layers."""
    flags = [is_deep(s) for _, s in layers]
    if flags and all(flags):
        return [block_name]
    return [m for (mods, _), f in zip(layers, flags, strict=False) if f for m in mods]
