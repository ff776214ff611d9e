"""Test fixtures: accelerators enabled for a block, the uncached baseline of a tiny pipeline, DeepCache
by its definition with plain PyTorch hooks, and tiny pipelines, CLIP and open_clip models saved to disk
so that tests load them through the same code path as real weights. The tiny models and the sampling
loop themselves are ``cachediff.testing``'s."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import diffusers
import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch.utils import _pytree as pytree
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from cachediff.testing import byte_alphabet, sample, tiny_pipe, tiny_transformer, tiny_unet


@contextmanager
def enabled(accelerator, helper_params: dict | None = None) -> Iterator:
    """Enable an accelerator (an engine, a module cache, or a helper with ``set_params``) for a block
    and always disable it, so that a failing test leaves a shared pipeline as it was."""
    if helper_params is not None:
        accelerator.set_params(**helper_params)
    accelerator.enable()
    try:
        yield accelerator
    finally:
        accelerator.disable()


@functools.cache
def tiny_baseline(kind: str) -> tuple[SimpleNamespace, dict, torch.Tensor]:
    """A tiny pipeline of ``kind``, its conditioning and its uncached ``sample`` (computed once)."""
    pipe, cond = tiny_pipe(kind)
    return pipe, cond, sample(pipe, cond)


@contextmanager
def reference_deepcache(unet: torch.nn.Module, producer: str, interval: int) -> Iterator[None]:
    """DeepCache by its definition, with plain PyTorch hooks and no cachediff code: every module runs,
    and on every call but each ``interval``-th the output of the ``producer`` module is replaced by its
    output on the last full call. One U-Net call per step."""
    state = dict(calls=0, kept=None)

    def count(module, args):
        state["calls"] += 1

    def swap(module, args, out):
        clone = functools.partial(pytree.tree_map, lambda t: t.clone() if isinstance(t, torch.Tensor) else t)
        if (state["calls"] - 1) % interval == 0:
            state["kept"] = clone(out)
            return None
        return clone(state["kept"])

    with removed_on_exit(
        unet.register_forward_pre_hook(count), unet.get_submodule(producer).register_forward_hook(swap)
    ):
        yield


@contextmanager
def reference_deepcache_by_time(unet: torch.nn.Module, producer: str, full_times) -> Iterator[None]:
    """DeepCache by its definition, keyed by each call's timestep argument and written without
    cachediff code: every module runs; a call at one of ``full_times`` keeps the ``producer``
    module's output, and a call at any other time has that output replaced by the one kept at the
    same position among the calls at one time (cond and uncond passes keep their own). For samplers
    that evaluate the model once per step."""
    state = dict(time=None, position=0, full=False, kept={})

    def enter(module, args, kwargs):
        t = float((args[1] if len(args) > 1 else kwargs["timesteps"]).reshape(-1)[0])
        state["position"] = state["position"] + 1 if t == state["time"] else 0
        state["time"], state["full"] = t, any(abs(t - f) <= 1e-4 * max(1.0, abs(f)) for f in full_times)

    def swap(module, args, out):
        if state["full"]:
            state["kept"][state["position"]] = out.clone()
            return None
        return state["kept"][state["position"]].clone()

    with removed_on_exit(
        unet.register_forward_pre_hook(enter, with_kwargs=True),
        unet.get_submodule(producer).register_forward_hook(swap),
    ):
        yield


class Runs:
    """Counts the runs of one module inside the block (a global forward hook, which fires for every
    module called; a hook on a module the engine skips would make every call full, as something
    would read it). Count a layer *inside* a skipped module: the skipped module itself is called on
    a cached step and hands out a placeholder without running its layers."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.count = module, 0

    def __enter__(self):
        def hook(module, args, out):
            self.count += module is self.module

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@contextmanager
def removed_on_exit(*handles) -> Iterator[None]:
    """Removes PyTorch hook ``handles`` on leaving, however it is left."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def tiny_clip_tokenizer(folder):
    """A character-level CLIP tokenizer whose vocabulary is written here (no download)."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_alphabet()
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def tiny_t5_tokenizer(words: str = "a an the of on in with photograph astronaut riding horse red fox"):
    """A T5-style SentencePiece-Unigram tokenizer over ``words`` and single letters (no download)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in words.split()] + [
        (c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"
    ]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    )


def save_tiny_clip(folder):
    """Save a tiny random CLIP model and processor (32 px images, the tiny tokenizer) to ``folder``."""
    folder = Path(folder)
    torch.manual_seed(0)
    tokenizer = tiny_clip_tokenizer(folder / "_tokenizer")
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=tokenizer.vocab_size, max_position_embeddings=16,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(CLIPImageProcessor(size=32, crop_size=32), tokenizer).save_pretrained(folder)
    return folder


def save_tiny_open_clip(folder) -> tuple[Path, str]:
    """Save a tiny random open_clip model (32 px images, open_clip's own tokenizer, which ships in its
    wheel): returns the weights file and the architecture name it registers with open_clip."""

    import open_clip  # optional: needs a torchvision that matches torch

    folder, arch = Path(folder), "tiny-clip-test"
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(
        embed_dim=16,
        vision_cfg=dict(image_size=32, layers=1, width=32, head_width=16, patch_size=8),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    )
    (folder / f"{arch}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{arch}.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model(arch).state_dict(), folder / "open_clip_model.pt")
    return folder / "open_clip_model.pt", arch


def _tiny_text_encoder(hidden: int = 32, projection: int | None = None):
    cfg = CLIPTextConfig(
        vocab_size=514,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=projection or hidden,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _tiny_vae(temporal: bool = False):
    if temporal:
        return AutoencoderKLTemporalDecoder(
            block_out_channels=(32, 32), layers_per_block=1, latent_channels=4
        )
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


#: Tiny pipeline kinds that ``save_tiny_pipeline`` builds, by the diffusers pipeline class they load as.
TINY_PIPELINES = {
    "sd": "StableDiffusionPipeline",
    "sd-img2img": "StableDiffusionImg2ImgPipeline",
    "sd-inpaint": "StableDiffusionInpaintPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "svd": "StableVideoDiffusionPipeline",
    "ddpm": "DDIMPipeline",
    "ldm": "LDMPipeline",
    "pixart": "PixArtAlphaPipeline",
}


def save_tiny_pipeline(kind: str, folder, seed: int = 0):
    """Build a tiny random pipeline of ``kind`` (see ``TINY_PIPELINES``), ``save_pretrained`` it to
    ``folder`` and return the folder, so tests load it through the same code path as real weights."""
    torch.manual_seed(seed)
    folder = Path(folder)
    if kind == "ddpm":
        unet, _ = tiny_unet("ddpm", seed)
        pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler())
    elif kind == "ldm":  # a VQ autoencoder (8x8x3 latents of 16x16 images) and a latent UNet2DModel
        vq = diffusers.VQModel(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=3,
            norm_num_groups=8, num_vq_embeddings=32, vq_embed_dim=3, sample_size=16,
        )  # fmt: skip
        unet, _ = tiny_unet("ddpm", seed)
        pipe = diffusers.LDMPipeline(vqvae=vq.eval(), unet=unet, scheduler=diffusers.DDIMScheduler())
    elif kind in ("sd", "sd-img2img", "sd-inpaint"):
        unet, _ = tiny_unet("sd", seed)
        if kind == "sd-inpaint":  # 9 input channels: latent, mask, masked-image latent
            unet = diffusers.UNet2DConditionModel.from_config({**unet.config, "in_channels": 9})
        pipe = getattr(diffusers, TINY_PIPELINES[kind])(
            vae=_tiny_vae(),
            text_encoder=_tiny_text_encoder(32),
            tokenizer=tiny_clip_tokenizer(folder / "_tokenizer"),
            unet=unet,
            scheduler=diffusers.DDIMScheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif kind == "sdxl":
        unet, _ = tiny_unet("sdxl", seed)
        unet = diffusers.UNet2DConditionModel.from_config(
            {**unet.config, "cross_attention_dim": 32, "projection_class_embeddings_input_dim": 16 + 6 * 8}
        )
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=_tiny_vae(),
            text_encoder=_tiny_text_encoder(16),
            text_encoder_2=_tiny_text_encoder(16, projection=16),
            tokenizer=tiny_clip_tokenizer(folder / "_tokenizer"),
            tokenizer_2=tiny_clip_tokenizer(folder / "_tokenizer_2"),
            unet=unet,
            scheduler=diffusers.EulerDiscreteScheduler(),
        )
    elif kind == "svd":
        unet, _ = tiny_unet("svd", seed)
        vision = CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=224, patch_size=32, projection_dim=32,
        )  # fmt: skip
        pipe = diffusers.StableVideoDiffusionPipeline(
            vae=_tiny_vae(temporal=True),
            image_encoder=CLIPVisionModelWithProjection(vision).eval(),
            unet=unet,
            scheduler=diffusers.EulerDiscreteScheduler(),
            feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        )
    elif kind == "pixart":  # the tiny DiT, a 2-layer T5 encoder over caption_channels=12
        transformer, _ = tiny_transformer(seed)
        tokenizer = tiny_t5_tokenizer()
        t5 = T5Config(vocab_size=len(tokenizer), d_model=12, d_kv=4, d_ff=24, num_layers=2, num_heads=2)
        pipe = diffusers.PixArtAlphaPipeline(
            tokenizer=tokenizer,
            text_encoder=T5EncoderModel(t5).eval(),
            vae=_tiny_vae(),
            transformer=transformer,
            scheduler=diffusers.DPMSolverMultistepScheduler(),
        )
    else:
        raise ValueError(f"kind must be one of {list(TINY_PIPELINES)}, got {kind!r}")
    pipe.save_pretrained(folder)
    return folder
