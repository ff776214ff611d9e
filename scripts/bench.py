"""Speed and cache memory side by side: uncached, the official DeepCache 0.1.1 helper, cachediff.

Random-weight U-Nets of the real architectures at sizes a CPU can run, a DDIM loop with batched CFG,
interleaved in one process (``metrics.interleaved``: the order rotates each round; warm-up first;
medians of the repeats). Per configuration it reports the measured speedup of both helpers, the MAC bound
(baseline MACs over the schedule's average MACs), efficiency = measured speedup / MAC bound, the
time ratio cachediff / official (with the spread over repeats), the bytes each cache holds, and the
peak memory of one run of each (above the memory in use before it; ``cachediff.metrics.memory``).

Example:
    python scripts/bench.py --out docs/results/bench            # the full table (slow on a CPU)
    python scripts/bench.py --quick                             # tiny models, one repeat (CI smoke test)
    python scripts/bench.py --compile --archs ddpm-cifar10 --out docs/results/bench   # eager vs compiled
    python scripts/bench.py --gpu                               # the GPU table (scripts/gpu_check.sh)
    python scripts/bench.py --gpu --quick                       # the same code on tiny CPU models

The GPU table (``--gpu``): per case (SD 1.5 at 512 px with U-Net batch 2, one image with CFG, and 16;
SDXL at 1024 px, batch 2) and per mode (eager; ``torch.compile``; ``mode="reduce-overhead"``, CUDA
graphs), the uncached U-Net and cachediff at I = 3/B = 0, I = 5/B = 0, I = 5/B = 1 and the forecast at
I = 5/B = 0, in the timestep and fitted on the shallow feature (and the official helper, eager), timed
interleaved after a warm-up round that compiles; eager across every case first, then each compiled mode.
Per row: seconds per image, speedup over the same mode's uncached run and over eager uncached, MAC
bound, efficiency, the median full and cached U-Net call (CUDA events), peak memory, cache bytes, the
largest difference from the same setting in eager mode, graphs compiled after the warm-up, the device,
torch and CUDA versions. Each (mode, case)'s rows are written as it finishes (``docs/results/gpu``).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch
from diffusers import DDIMScheduler
from torch._dynamo.utils import counters
from torch.utils import _pytree as pytree

import cachediff
from cachediff import DeepCacheConfig, DeepCacheSDHelper, metrics
from cachediff.accelerators import call_macs
from cachediff.architectures import CPU_SIZES, build, example_inputs
from cachediff.cli import DTYPES
from cachediff.core import CUDA_GRAPHS
from cachediff.files import output_folder, read_csv, update_csv
from cachediff.launch import check_device
from cachediff.metrics import average_macs
from cachediff.testing import denoise_example, tiny_unet
from cachediff.trees import tree_nbytes

CONFIGS = [(3, 0), (5, 0), (5, 1)]  # (interval, branch id)
#: The GPU table's cases: (architecture, latent side, U-Net batch; 2 = one image with CFG), within each
#: mode in the order they run (a run cut short keeps the first ones).
GPU_CASES = [("sd1.5", 64, 2), ("sdxl", 128, 2), ("sd1.5", 64, 16)]
#: Its modes: name -> torch.compile options (None: eager).
GPU_MODES = {
    "eager": None,
    "compile": dict(fullgraph=True),
    "reduce-overhead": dict(fullgraph=True, mode="reduce-overhead"),
}
#: Its cachediff settings.
GPU_SETTINGS = {
    "I3-B0": DeepCacheConfig(3, 0),
    "I5-B0": DeepCacheConfig(5, 0),
    "I5-B1": DeepCacheConfig(5, 1),
    "I5-B0-forecast": DeepCacheConfig(5, 0, reuse="forecast", order=2),
    "I5-B0-forecast-shallow": DeepCacheConfig(5, 0, reuse="forecast", order=2, time="shallow"),
}


def bench_config(pipe, inputs, steps, interval, branch, repeats, compiled=None) -> dict:
    """Interleaved timings of baseline / official / cachediff for one (interval, branch), and of
    cachediff on the ``compiled`` forward of the U-Net where one is given."""
    from DeepCache import DeepCacheSDHelper as Official

    helpers = {"official": Official(pipe), "cachediff": DeepCacheSDHelper(pipe)}
    if compiled is not None:
        helpers["compiled"] = helpers["cachediff"]
    for h in helpers.values():
        h.set_params(cache_interval=interval, cache_branch_id=branch)
    held = {}

    def run(name: str):
        helper = helpers.get(name)

        def fn():
            if name == "compiled":
                pipe.unet.forward = compiled  # compiled before the hooks, as documented
            if helper:
                helper.enable()
            try:
                denoise_example(pipe, inputs, steps)
                if name == "official":
                    held[name] = tree_nbytes(list(helper.cached_output.values()))
                elif name == "cachediff":
                    held[name] = helper.engine.cache_nbytes
            finally:
                if helper:
                    helper.disable()
                vars(pipe.unet).pop("forward", None)

        return fn

    runs = {name: run(name) for name in ("baseline", *helpers)}
    times = metrics.interleaved(runs, repeats, warmup=1)  # the warm-up round compiles
    # one more run each, untimed: peak memory above the memory in use before it
    device = inputs["sample"].device
    peak = {name: metrics.peak_memory(fn, device) for name, fn in runs.items()}
    full, cached = call_macs(cachediff.engine_for(pipe.unet, DeepCacheConfig(branch=branch)), inputs)
    bound = full / average_macs(full, cached, DeepCacheConfig(interval).budget(steps), steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [c / o for c, o in zip(times["cachediff"], times["official"], strict=True)]
    return dict(
        interval=interval,
        branch=branch,
        baseline_s=med["baseline"],
        official_speedup=med["baseline"] / med["official"],
        cachediff_speedup=med["baseline"] / med["cachediff"],
        mac_bound=bound,
        official_efficiency=med["baseline"] / med["official"] / bound,
        cachediff_efficiency=med["baseline"] / med["cachediff"] / bound,
        time_ratio_cachediff_over_official=statistics.median(ratios),
        time_ratio_min=min(ratios),
        time_ratio_max=max(ratios),
        official_cache_mib=held["official"] / 2**20,
        cachediff_cache_mib=held["cachediff"] / 2**20,
        **{f"{k}_peak_mib": v / 2**20 if v is not None else float("nan") for k, v in peak.items()},
        **(
            dict(
                compiled_speedup=med["baseline"] / med["compiled"],
                compiled_efficiency=med["baseline"] / med["compiled"] / bound,
            )
            if "compiled" in med
            else {}
        ),
    )


def bench_compile(pipe, inputs, steps, interval, branch, repeats) -> dict:
    """Eager vs ``torch.compile`` (inductor), uncached and with cachediff, interleaved after a warm-up
    round that compiles; reports speedups and whether anything compiled again after the warm-up."""
    helper = DeepCacheSDHelper(pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    cachediff.compile_denoiser(pipe, fullgraph=True)  # before the helper's hooks, as documented
    compiled = vars(pipe.unet).pop("forward")

    def variant(compile_on: bool, cached: bool):
        def run():
            if compile_on:
                pipe.unet.forward = compiled
            if cached:
                helper.enable()
            try:
                denoise_example(pipe, inputs, steps)
            finally:
                helper.disable()
                vars(pipe.unet).pop("forward", None)

        return run

    names = {"eager": (False, False), "compiled": (True, False), "eager_cached": (False, True)}
    names["compiled_cached"] = (True, True)
    counters.clear()
    variants = {k: variant(*v) for k, v in names.items()}
    metrics.interleaved(variants, repeats=0, warmup=1)  # compiles every graph
    graphs = counters["stats"]["unique_graphs"]
    times = metrics.interleaved(variants, repeats, warmup=0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(
        interval=interval,
        branch=branch,
        eager_s=med["eager"],
        compiled_over_eager=med["eager"] / med["compiled"],
        cachediff_eager_speedup=med["eager"] / med["eager_cached"],
        cachediff_compiled_speedup=med["eager"] / med["compiled_cached"],
        compiled_cachediff_over_eager_cachediff=med["eager_cached"] / med["compiled_cached"],
        graphs=graphs,
        graphs_after_warmup=counters["stats"]["unique_graphs"] - graphs,
        graph_breaks=sum(counters["graph_break"].values()),
    )


def gpu_mode(
    pipe, inputs, mode: str, steps: int, repeats: int, quick: bool, eager: dict, bounds: dict
) -> list[dict]:
    """The GPU table's rows of one case in one mode (see the module's docstring). ``eager`` maps each
    setting to its eager output (filled in eager mode, compared against in the compiled ones);
    ``bounds`` each setting to its MAC bound (counted eagerly: MACs are not counted in a graph)."""
    options = GPU_MODES[mode]
    torch._dynamo.reset()
    if options is not None:
        # quick: dynamo only (inductor compiles for minutes on a CPU), marked as compile_denoiser marks a
        # CUDA-graph mode so that the session's copies out of the pool still run
        cachediff.compile_denoiser(pipe, **(dict(fullgraph=True, backend="eager") if quick else options))
        if quick:
            setattr(pipe.unet, CUDA_GRAPHS, options.get("mode") == "reduce-overhead")
    engines = {name: cachediff.engine_for(pipe, config) for name, config in GPU_SETTINGS.items()}
    outputs: dict[str, torch.Tensor] = {}
    held: dict[str, int] = {}

    def run(name: str, engine=None):
        def fn():
            if engine is not None:
                engine.enable()
            try:
                outputs[name] = denoise_example(pipe, inputs, steps)
            finally:
                if engine is not None:
                    held[name] = engine.cache_nbytes  # before disable drops it
                    engine.disable()

        return fn

    runs = {"uncached": run("uncached"), **{name: run(name, e) for name, e in engines.items()}}
    if options is None and importlib.util.find_spec("DeepCache") is not None:
        runs["official I3-B0"] = official_run(pipe, inputs, steps, outputs)
    counters.clear()
    metrics.interleaved(runs, repeats=0, warmup=1)  # compiles (and captures) every graph
    graphs = counters["stats"]["unique_graphs"]
    times = metrics.interleaved(runs, repeats, warmup=0)
    recompiled = counters["stats"]["unique_graphs"] - graphs
    device = inputs["sample"].device
    peaks = {name: metrics.peak_memory(fn, device) for name, fn in runs.items()}
    images = inputs["sample"].shape[0] // 2  # CFG: two U-Net rows per image
    median = {name: statistics.median(t) for name, t in times.items()}
    eager_uncached = eager.get("uncached_s", median["uncached"])
    rows = []
    for name in runs:
        engine, bound = engines.get(name), bounds.get(name, 1.0)
        speedup = median["uncached"] / median[name]
        if options is None:
            eager[name] = outputs[name]
        row = dict(mode=mode, setting=name, seconds_per_image=median[name] / images, speedup=speedup)
        row.update(
            speedup_over_eager_uncached=eager_uncached / median[name],
            mac_bound=bound,
            efficiency=speedup / bound,
            **call_ms(engine, median["uncached"] / steps if name == "uncached" else None),
            peak_mib=peaks[name] / 2**20 if peaks[name] is not None else float("nan"),
            cache_mib=held.get(name, 0) / 2**20,
            max_abs_diff_vs_eager=(outputs[name] - eager[name]).abs().max().item() if name in eager else None,
            graphs_after_warmup=recompiled,
        )
        rows.append(row)
    eager.setdefault("uncached_s", median["uncached"])
    cachediff.uncompile(pipe)
    return rows


def official_run(pipe, inputs, steps: int, outputs: dict):
    """The official DeepCache helper at I = 3/B = 0, eager."""
    from DeepCache import DeepCacheSDHelper as Official

    helper = Official(pipe)
    helper.set_params(cache_interval=3, cache_branch_id=0)

    def fn():
        helper.enable()
        try:
            outputs["official I3-B0"] = denoise_example(pipe, inputs, steps)
        finally:
            helper.disable()

    return fn


def mac_bounds(pipe, inputs, steps: int) -> dict[str, float]:
    """Each cachediff setting's (and the official helper's) uncached MACs over its average MACs."""
    configs = {**GPU_SETTINGS, "official I3-B0": DeepCacheConfig(3, 0)}
    bounds = {}
    for name, config in configs.items():
        full, cached = call_macs(
            cachediff.engine_for(pipe.unet, DeepCacheConfig(branch=config.branch)), inputs
        )
        bounds[name] = full / average_macs(full, cached, config.budget(steps), steps)
    return bounds


def call_ms(engine, uncached_call_s: float | None) -> dict:
    """Median full and cached U-Net call of the engine's last run, in ms (CUDA events on a GPU); an
    uncached run's mean call; nothing for the official helper."""
    if engine is None:
        full = None if uncached_call_s is None else uncached_call_s * 1e3
        return dict(full_call_ms=full, cached_call_ms=None)
    calls = engine.stats.calls
    full = [c.seconds for c in calls if c.full]
    cached = [c.seconds for c in calls if not c.full]
    return dict(
        full_call_ms=statistics.median(full) * 1e3,
        cached_call_ms=statistics.median(cached) * 1e3 if cached else None,
    )


def gpu_table(args, device, dtype) -> None:
    """The GPU table: every mode and case, eager across every case first (its rows are the cheapest
    and the compiled ones compare with them); rows written as each (mode, case) finishes."""
    torch._dynamo.config.cache_size_limit = 64  # every setting's graphs stay compiled side by side
    about = dict(device=device_name(device), torch=torch.__version__, cuda=torch.version.cuda or "none")
    cases = [(a, 8, 2) for a in dict.fromkeys(c[0] for c in GPU_CASES)] if args.quick else GPU_CASES
    cases, setups = [c for c in cases if c[0] in args.archs], {}
    for mode in [m for m in GPU_MODES if m in args.modes]:
        for arch, side, batch in cases:
            if (arch, side, batch) not in setups:  # the U-Net, its inputs, eager outputs, MAC bounds
                unet, inputs = model_and_inputs(arch, args.quick, side, device, dtype, batch)
                pipe = SimpleNamespace(unet=unet, scheduler=DDIMScheduler())
                setups[arch, side, batch] = (pipe, inputs, {}, mac_bounds(pipe, inputs, args.steps))
            pipe, inputs, eager, bounds = setups[arch, side, batch]
            rows = gpu_mode(pipe, inputs, mode, args.steps, args.repeats, args.quick, eager, bounds)
            for row in rows:
                key = f"{arch}-{side}-b{batch}-{mode}-{row['setting']}"
                row = dict(arch=arch, latent=side, unet_batch=batch, **row, **about)
                update_csv(args.out / "results.csv", dict(config=key, **row), key="config")
                print(f"{key}: {row['seconds_per_image'] * 1e3:.1f} ms per image, {row['speedup']:.2f}x "
                      f"(MAC bound {row['mac_bound']:.2f}x)", flush=True)  # fmt: skip
            table = pd.DataFrame(read_csv(args.out / "results.csv")).drop(columns="config")
            (args.out / "table.md").write_text(table.to_markdown(index=False, floatfmt=".3g") + "\n")


def device_name(device: torch.device) -> str:
    return (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )


def model_and_inputs(
    arch: str, quick: bool, size: int | None = None, device="cpu", dtype=torch.float32, batch: int = 2
):
    """The U-Net of ``arch`` (tiny with ``quick``) and inputs of one step at U-Net ``batch`` (2: one
    image with CFG), on ``device`` in ``dtype``."""
    unet, inputs = _model_and_inputs(arch, quick, size, batch)
    to = lambda t: t.to(device, dtype) if t.is_floating_point() else t.to(device)  # noqa: E731
    return unet.to(device, dtype), pytree.tree_map(lambda t: to(t) if torch.is_tensor(t) else t, inputs)


def _model_and_inputs(arch: str, quick: bool, size: int | None = None, batch: int = 2):
    if quick:
        kind = {"sd1.5": "sd", "sdxl": "sdxl", "svd": "svd", "ddpm-cifar10": "ddpm"}[arch]
        unet, cond = tiny_unet(kind, batch=batch)
        cond.pop("concat", None)
        size, frames = 8, 2
    else:
        unet = build(arch)
        size, frames = size or CPU_SIZES[arch][0], CPU_SIZES[arch][1]
    inputs = example_inputs(unet, batch=batch, size=size, frames=frames)
    if quick:
        inputs.update({k: v for k, v in cond.items()})
    return unet, inputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--archs", nargs="+", choices=list(CPU_SIZES), help="architectures (default: all; --gpu: sd1.5 sdxl)"
    )
    p.add_argument("--steps", type=int, default=20, help="DDIM steps per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up round")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="tiny models, 6 steps, 1 repeat: a smoke test")
    p.add_argument("--size", type=int, help="latent side for every architecture (default: per arch)")
    p.add_argument("--compile", action="store_true", help="eager vs torch.compile instead (I=3/B=0 only)")
    p.add_argument(
        "--gpu", action="store_true", help="the GPU table: SD 1.5 at 512 px (U-Net batch 2 and 16) and SDXL "
        "at 1024 px (batch 2), fp16, 50 DDIM steps, eager / compiled / CUDA graphs, into docs/results/gpu "
        "(with --quick: tiny models on the CPU, to check that it runs)",
    )  # fmt: skip
    p.add_argument(
        "--modes", nargs="+", default=list(GPU_MODES), choices=list(GPU_MODES), help="--gpu: the modes "
        "timed, eager first (the compiled outputs are compared with its)",
    )  # fmt: skip
    p.add_argument("--device", help="torch device (default: cuda with --gpu, else cpu)")
    p.add_argument("--dtype", choices=list(DTYPES), help="weights and compute (default: float16 with --gpu)")
    p.add_argument(
        "--compiled", action="store_true", help="also time cachediff on the torch.compile'd U-Net (--gpu: on)"
    )
    p.add_argument(
        "--out", type=Path, help="folder for results.csv and table.md (compile.csv, .md); rows are merged"
    )
    args = p.parse_args()
    if min(args.steps, args.repeats, args.threads) < 1 or (args.size is not None and args.size < 8):
        p.error("--steps, --repeats and --threads must be >= 1, --size >= 8")
    if args.gpu:
        gpu_archs = list(dict.fromkeys(case[0] for case in GPU_CASES))
        args.archs = [a for a in args.archs or gpu_archs if a in gpu_archs]
        if not args.archs:
            p.error(f"--gpu times {' and '.join(gpu_archs)}; pick among them with --archs")
        args.steps, args.repeats, args.out = 50, min(args.repeats, 2), args.out or Path("docs/results/gpu")
        args.device = args.device or ("cpu" if args.quick else "cuda")
        args.dtype = args.dtype or ("float32" if args.quick else "float16")
    args.archs = args.archs or list(CPU_SIZES)
    if args.quick:
        args.steps, args.repeats = 6, 1
    try:
        device = check_device(args.device or "cpu")
        if args.out is not None:
            output_folder(args.out)  # fails now, not after the runs
    except ValueError as err:
        p.error(str(err))
    dtype = DTYPES[args.dtype or "float32"]
    torch.set_num_threads(args.threads)
    metrics.return_freed_memory()  # so that each run's peak memory is its own
    if args.gpu:
        return gpu_table(args, device, dtype)
    rows = []
    for arch in args.archs:
        unet, inputs = model_and_inputs(arch, args.quick, args.size, device, dtype)
        latent = inputs["sample"].shape[-1]
        pipe = SimpleNamespace(unet=unet, scheduler=DDIMScheduler())
        options = dict(fullgraph=True, **({"backend": "eager"} if args.quick else {}))
        if args.compile:
            row = dict(arch=arch, latent=latent)
            row.update(bench_compile(pipe, inputs, args.steps, *CONFIGS[0], args.repeats))
            rows.append(row)
            print(row, flush=True)
            continue
        for interval, branch in CONFIGS:
            compiled = None
            if args.compiled:  # afresh per configuration: three graphs each (dynamo's limit is 8)
                torch._dynamo.reset()
                compiled = vars(cachediff.compile_denoiser(pipe, **options)).pop("forward")
            row = dict(arch=arch, latent=latent, device=str(device), dtype=str(dtype).removeprefix("torch."))
            row.update(bench_config(pipe, inputs, args.steps, interval, branch, args.repeats, compiled))
            rows.append(row)
            print(
                f"{arch:13s} I={interval} B={branch}: speedup official {row['official_speedup']:.2f}x, "
                f"cachediff {row['cachediff_speedup']:.2f}x (MAC bound {row['mac_bound']:.2f}x, "
                f"efficiency {row['cachediff_efficiency']:.2f}); cachediff/official time "
                f"{row['time_ratio_cachediff_over_official']:.3f} [{row['time_ratio_min']:.3f}, "
                f"{row['time_ratio_max']:.3f}]; cache {row['official_cache_mib']:.1f} vs "
                f"{row['cachediff_cache_mib']:.2f} MiB; peak {row['official_peak_mib']:.1f} vs "
                f"{row['cachediff_peak_mib']:.1f} MiB (uncached {row['baseline_peak_mib']:.1f})",
                flush=True,
            )
    if args.out:
        write_results(rows, args.out, "compile" if args.compile else "results")


def write_results(rows: list[dict], out: Path, name: str) -> None:
    """Merge ``rows`` into ``<out>/<name>.csv`` (one row per arch, latent, interval and branch: other
    architectures' rows are kept) and write the whole CSV as a Markdown table beside it."""
    csv = out / f"{name}.csv"
    for row in rows:
        key = f"{row['arch']}-{row['latent']}-I{row['interval']}-B{row['branch']}"
        update_csv(csv, dict(config=key, **row), key="config")
    table = pd.DataFrame(read_csv(csv)).drop(columns="config")
    (out / f"{'table' if name == 'results' else name}.md").write_text(
        table.to_markdown(index=False, floatfmt=".3g") + "\n"
    )


if __name__ == "__main__":
    main()
