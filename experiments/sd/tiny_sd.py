"""The tiny Stable Diffusion trained here: its components' configurations, prompts and tokenizer.

Every component of a diffusers ``StableDiffusionPipeline``, scaled to Fashion-MNIST and 2 CPU cores:

- ``AutoencoderKL`` with 4 latent channels and f = 2: a 1 x 32 x 32 image (28 x 28 padded with
  black) becomes a 4 x 16 x 16 latent;
- a ``CLIPTokenizer`` over a vocabulary written here (``write_tokenizer``): CLIP's byte alphabet plus
  BPE merges learned from the prompt words, so every prompt tokenizes, known words as one token each;
- a small ``CLIPTextModel`` (2 layers, width 64), trained jointly with the U-Net (a random frozen
  encoder would hand the U-Net features that do not know that "a photo of a coat" and "coat" mean
  the same; trained, it costs under 1% of the U-Net's compute);
- a ``UNet2DConditionModel`` laid out like SD's where attention is cheap on a CPU: three levels
  (16 x 16, 8 x 8, 4 x 4), a cross-attention down/up block at 8 x 8, a cross-attention mid block,
  plain blocks at the deepest level (as SD) and at 16 x 16 (where SD has attention too: on 2 cores it
  would cost 2x the training time), two resnets per down block, so 9 skip branches (ids 0..8) where
  SD 1.5 has 12;
- ``PNDMScheduler`` configured as SD v1.5's (PLMS, scaled-linear betas), no safety checker.

Example:
    >>> tokens = prompt_words(TEMPLATES, CLASS_NAMES)
    >>> "boot" in tokens and "photo" in tokens
    True
    >>> merges = learn_bpe(["coat", "boot", "boot"])
    >>> merges[0], "".join(merges[-1])  # the most frequent pair first; merged until words are whole
    (('b', 'o'), 'coat</w>')
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import regex

from cachediff.datasets import FASHION_CLASSES
from cachediff.testing import byte_alphabet

CLASS_NAMES = FASHION_CLASSES

#: Prompt templates seen in training; "a photo of a {name}" is the canonical one.
TEMPLATES = (
    "a photo of a {name}",
    "a picture of a {name}",
    "a photo of the {name}",
    "an image of a {name}",
    "a black and white photo of a {name}",
    "a {name}",
    "{name}",
)
PROMPT_DROPOUT = 0.1  # share of training prompts replaced by "" (classifier-free guidance)
MAX_TOKENS = 16  # tokenizer.model_max_length and the text encoder's positions (SD: 77)
IMAGE_SIZE = 32  # 28 x 28 padded by 2 black pixels on each side
#: Where the finished autoencoder is kept (it ships as the pipeline's vae)
VAE_DIR = Path(__file__).resolve().parents[2] / "assets" / "tiny-sd" / "vae"

VAE_CONFIG = dict(
    in_channels=1,
    out_channels=1,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=IMAGE_SIZE,
)

TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=MAX_TOKENS,
    projection_dim=64,
)

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 2,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 96),
    layers_per_block=2,
    cross_attention_dim=TEXT_CONFIG["hidden_size"],
    attention_head_dim=2,  # diffusers' legacy name: the number of heads in SD-style U-Nets
    norm_num_groups=8,
)

#: SD v1.5's noise schedule; the training DDPMScheduler and the sampling PNDMScheduler share it.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
PNDM_CONFIG = dict(**SCHEDULE, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)


def prompt_words(templates=TEMPLATES, names=CLASS_NAMES) -> list[str]:
    """The words CLIP's pre-tokenizer makes of every training prompt (letters runs, other symbols)."""
    pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.I)
    text = " ".join(t.format(name=n) for t in templates for n in names)
    return pattern.findall(text.lower())


def learn_bpe(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges (Sennrich et al.) until every word is one token; CLIP's end-of-word marker ``</w>``.

    Ties go to the lexically smallest pair, so the merges are the same on every machine.
    """
    counts = collections.Counter(words)
    vocab = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in counts.items()}
    merges = []
    while True:
        pairs = collections.Counter()
        for word, c in vocab.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += c
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        vocab = {_merge(word, best): c for word, c in vocab.items()}


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def write_tokenizer(folder: Path) -> None:
    """A ``CLIPTokenizer`` folder (vocab.json, merges.txt, configs) whose vocabulary is CLIP's byte
    alphabet, the learned merges and the two special tokens, in CLIP's order."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = byte_alphabet()  # CLIP's 256 byte stand-ins, in CLIP's order
    merges = learn_bpe(prompt_words())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2 (cachediff tiny SD: merges learned from its prompts)"] + [
        " ".join(m) for m in merges
    ]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    config = dict(
        model_max_length=MAX_TOKENS,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        do_lower_case=True,
        tokenizer_class="CLIPTokenizer",
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
