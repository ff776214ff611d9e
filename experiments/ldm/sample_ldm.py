"""LDM-4-G on ImageNet 256 x 256, the paper's Table 1: class-conditional samples of latent-diffusion's
cin256-v2 with the paper's sampler (the CompVis DDIMSampler, 250 steps, eta 0, classifier-free
guidance 1.5, the unconditional class 1000), uncached or with DeepCache (uniform or non-uniform N, at
branch 0 as the paper's LDM code), for the ADM evaluator's FID.

Image k comes from seed k: its class (uniform over the 1000 classes) and its initial latent are drawn
from a generator seeded with k, so any image can be made again. Shards of ``--shard`` images are saved
as they finish (a rerun resumes; under ``torchrun`` or ``accelerate launch`` the processes share the
shards, and two runs on one folder claim them), then merged into
``<out>/<setting>/samples_<n>x<H>x<W>x3.npz`` with ``arr_0`` (uint8 images) and ``arr_1`` (labels), the
format of the ADM evaluator (guided-diffusion's ``evaluations/evaluator.py``), which the paper's FID,
sFID, IS, precision and recall came from. ``<setting>/run.json`` records the configuration, the MACs,
and the throughput as the paper reports it (images per second of one process, sampling and decoding).

Needs the released weights (not shipped): ``cin256-v2/model.ckpt`` of latent-diffusion.

Examples:
    python experiments/ldm/sample_ldm.py --ckpt models/ldm/cin256-v2/model.ckpt --samples 50000
    torchrun --nproc_per_node 8 experiments/ldm/sample_ldm.py --ckpt models/ldm/cin256-v2/model.ckpt \\
        --interval 20 --schedule non-uniform --center 120 --power 1.2 --device cuda
    python guided-diffusion/evaluations/evaluator.py VIRTUAL_imagenet256_labeled.npz \\
        runs/ldm/N20-b0-non-uniform-c120-p1.2/samples_50000x256x256x3.npz
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import cachediff
from cachediff import DeepCacheConfig, files
from cachediff.accelerators import call_macs
from cachediff.cli import DTYPES, exit_status, finite_scale
from cachediff.compvis import build_unet, ddim_times, load_ldm
from cachediff.launch import check_device, launched, wait_for_all

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt", required=True, help="latent-diffusion checkpoint ({'state_dict': ...}), e.g. model.ckpt"
    )
    p.add_argument(
        "--config", default=str(HERE / "cin256-v2.yaml"), help="latent-diffusion YAML of the model"
    )
    p.add_argument("--out", type=Path, default=Path("runs/ldm"), help="folder of the settings' folders")
    p.add_argument("--samples", type=int, default=50000, help="images, seeds 0..samples-1")
    p.add_argument("--shard", type=int, default=250, help="images per saved file (and per unit of work)")
    p.add_argument("--batch", type=int, default=16, help="images per sampler call")
    p.add_argument("--steps", type=int, default=250, help="DDIM steps")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--scale", type=float, default=1.5, help="classifier-free guidance scale")
    p.add_argument("--interval", type=int, default=1, help="DeepCache interval N (1: uncached)")
    p.add_argument(
        "--branch", type=int, default=0, help="branch id (paper branch - 1); the paper's LDM code: 0"
    )
    p.add_argument(
        "--schedule", default="uniform", choices=["uniform", "non-uniform"], help="full-step schedule"
    )
    p.add_argument("--center", type=int, default=120, help="non-uniform: centre step (paper, N = 20: 120)")
    p.add_argument("--power", type=float, default=1.2, help="non-uniform: power (paper, N = 20: 1.2-1.3)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument(
        "--dtype", default="float32", choices=list(DTYPES), help="compute dtype (float16 / bfloat16: under "
        "torch.autocast, as the original sampling scripts' --precision autocast; weights stay float32)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument(
        "--trust-checkpoint", action="store_true", help="load a checkpoint holding pickled objects"
    )
    args = p.parse_args(argv)
    if min(args.samples, args.shard, args.batch, args.steps, args.interval, args.threads or 1) < 1:
        p.error("--samples, --shard, --batch, --steps, --interval and --threads must be >= 1")
    if args.branch < 0 or args.eta < 0:
        p.error("--branch and --eta must be >= 0")
    if not finite_scale(args.scale):
        p.error(f"--scale must be a finite number >= 0, got {args.scale}")
    return args


def config_of(args) -> DeepCacheConfig:
    options = dict(center=args.center, power=args.power) if args.schedule == "non-uniform" else {}
    return DeepCacheConfig(interval=args.interval, branch=args.branch, schedule=args.schedule, **options)


def setting_name(args, config: DeepCacheConfig) -> str:
    """``ddim250`` uncached; ``N5-b0``, ``N20-b0-non-uniform-c120-p1.2`` cached (``s<T>-`` for T != 250)."""
    name = f"ddim{args.steps}" if config.interval == 1 else f"N{config.interval}-b{config.branch}"
    if config.interval > 1 and config.schedule == "non-uniform":
        name += f"-non-uniform-c{config.center}-p{config.power}"
    return name if config.interval == 1 or args.steps == 250 else f"s{args.steps}-{name}"


def draws(model, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Class and initial latent of each seed, from a generator seeded with it."""
    labels, noise = [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        labels.append(int(torch.randint(model.cond_stage_model.n_classes - 1, (1,), generator=gen)))
        noise.append(torch.randn(model.latent, generator=gen))
    return torch.tensor(labels), torch.stack(noise)


def latents(model, sampler, engine, seeds: list[int], args) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled latents and labels of ``seeds``, ``args.batch`` per sampler call (``engine``, if
    any, follows each call as a sampling run)."""
    labels, noise = draws(model, seeds)
    times, out = ddim_times(args.steps, model.num_timesteps), []
    for i in range(0, len(seeds), args.batch):
        y, x_t = labels[i : i + args.batch].to(args.device), noise[i : i + args.batch].to(args.device)
        c = model.get_learned_conditioning(y)
        uc = model.get_learned_conditioning(torch.full_like(y, model.cond_stage_model.n_classes - 1))
        run = cachediff.sampling_run(engine, times, "ddim") if engine else contextlib.nullcontext()
        quiet = io.StringIO()  # the sampler prints and draws a bar per call
        with run, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            z, _ = sampler.sample(
                S=args.steps, conditioning=c, batch_size=len(y), shape=list(model.latent), verbose=False,
                unconditional_guidance_scale=args.scale, unconditional_conditioning=uc, eta=args.eta, x_T=x_t,
            )  # fmt: skip
        out.append(z)
    return torch.cat(out), labels


def sample(model, sampler, engine, seeds: list[int], args) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (B, H, W, 3) and labels of ``seeds``."""
    z, labels = latents(model, sampler, engine, seeds, args)
    images = []
    for i in range(0, len(seeds), args.batch):
        x = ((model.decode_first_stage(z[i : i + args.batch]) + 1) / 2).clamp(0, 1)
        images.append(x.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(images), labels.numpy()


def merged_path(folder: Path, n: int, shape: tuple) -> Path:
    return folder / f"samples_{n}x{'x'.join(map(str, shape))}.npz"


def merge(folder: Path, starts: range, n: int) -> Path:
    """The shards in one ADM-format npz (``arr_0`` images, ``arr_1`` labels), written atomically."""
    parts = [np.load(folder / f"shard_{s:06d}.npz") for s in starts]
    images, labels = np.concatenate([p["arr_0"] for p in parts]), np.concatenate([p["arr_1"] for p in parts])
    path = merged_path(folder, n, images.shape[1:])
    with files.atomic_path(path) as tmp:
        np.savez(tmp, images, labels)
    return path


#: The options that decide what a shard holds: a folder's shards are only resumed under the same ones.
GENERATION = ("config", "ckpt", "steps", "eta", "scale", "shard", "dtype")


def check_folder(folder: Path, args) -> None:
    """Record the options that decide the images in ``folder/generation.json`` on the first run;
    refuse a later run with other ones (its shards would mix two kinds of images)."""
    wanted = {
        k: str(Path(v).resolve()) if k in ("config", "ckpt") else v
        for k, v in vars(args).items()
        if k in GENERATION
    }
    record = folder / "generation.json"
    if record.exists():
        held = json.loads(record.read_text())
        changed = [k for k in GENERATION if held.get(k) != wanted[k]]
        if changed:
            raise ValueError(
                f"{folder} holds shards made with other {', '.join(changed)} "
                f"({', '.join(f'{k}={held.get(k)}' for k in changed)}): give another --out"
            )
    else:
        files.write_json(record, wanted)


def shard_done(path: Path, size: int) -> bool:
    """Whether the shard at ``path`` exists and holds ``size`` images (a run with fewer ``--samples``
    leaves a short last shard, which a larger run makes again)."""
    if not path.exists():
        return False
    with np.load(path) as shard:
        return len(shard["arr_1"]) == size


def run(args) -> int:
    with launched() as (rank, world):
        if args.device == "cuda" and world > 1:  # one GPU per process
            args.device = f"cuda:{os.environ.get('LOCAL_RANK', rank)}"
        device = check_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        config = config_of(args)
        folder = files.output_folder(args.out / setting_name(args, config))
        model = load_ldm(args.config, args.ckpt, trust=args.trust_checkpoint).to(device)
        ddim_times(args.steps, model.num_timesteps)  # a step count the model cannot take fails now
        check_folder(folder, args)  # once the model loads: a failed start records nothing
        from ldm.models.diffusion.ddim import DDIMSampler

        sampler, unet = DDIMSampler(model), model.model.diffusion_model
        engine = cachediff.engine_for(unet, config) if config.interval > 1 else None
        starts = range(0, args.samples, args.shard)
        sizes = {s: min(args.shard, args.samples - s) for s in starts}
        files.remove_stale_temporaries(folder)
        made = sum(shard_done(folder / f"shard_{s:06d}.npz", n) for s, n in sizes.items())
        if made and rank == 0:
            print(f"resuming: {made} of {len(starts)} shards already made in {folder}", file=sys.stderr)
        dtype = DTYPES[args.dtype]
        precision = torch.autocast(device.type, dtype) if dtype != torch.float32 else contextlib.nullcontext()
        with engine or contextlib.nullcontext(), torch.no_grad(), precision:
            for start in tqdm(starts[rank::world], desc=folder.name, disable=rank > 0):
                path = folder / f"shard_{start:06d}.npz"
                seeds = list(range(start, min(start + args.shard, args.samples)))
                if shard_done(path, len(seeds)) or not files.claim(path):
                    continue
                began = time.perf_counter()
                images, labels = sample(model, sampler, engine, seeds, args)
                timing = dict(seconds_per_image=(time.perf_counter() - began) / len(seeds), images=len(seeds))
                files.write_json(
                    timing_path(path), dict(timing, pattern=engine.stats.pattern if engine else None)
                )
                with files.atomic_path(path) as tmp:
                    np.savez(tmp, images, labels)
                files.release(path)
        wait_for_all(world)
        missing = [s for s, n in sizes.items() if not shard_done(folder / f"shard_{s:06d}.npz", n)]
        if rank == 0 and missing:
            print(f"{len(missing)} of {len(starts)} shards are still being made by another run (claimed); "
                  "run again once it has finished to merge them", file=sys.stderr)  # fmt: skip
        elif rank == 0:
            write_record(folder, merge(folder, starts, args.samples), model, config, args)
    return 0


def timing_path(shard: Path) -> Path:
    """Where a shard's own timing is kept (``shard_<start>.json``), so that reruns and resumes, in
    any process, report the throughput of every shard."""
    return shard.with_suffix(".json")


def throughput(folder: Path, starts: range) -> dict:
    """Images per second of one process (the median over the shards' seconds per image), the images
    timed, and the sampler's pattern of full and cached steps, from the shards' timing files (shards
    made before they were kept count as untimed)."""
    timings = [
        files.read_json(p) for s in starts if (p := timing_path(folder / f"shard_{s:06d}.npz")).exists()
    ]
    if not timings:
        return dict(images_per_second=None, images_timed=0, pattern=None)
    seconds = statistics.median(t["seconds_per_image"] for t in timings)
    return dict(images_per_second=1 / seconds, images_timed=sum(t["images"] for t in timings),
                pattern=timings[-1]["pattern"])  # fmt: skip


def write_record(folder: Path, merged: Path, model, config: DeepCacheConfig, args) -> None:
    """``run.json``: the configuration, the MACs and the throughput of the merged samples."""
    shadow = build_unet(model.unet_params, device="meta")  # counted on a meta copy: no compute
    with torch.device("meta"):
        inputs = dict(x=torch.zeros(1, *model.latent), timesteps=torch.ones(1))
        inputs["context"] = torch.zeros(1, 1, model.unet_params["context_dim"])
    full, cached = call_macs(cachediff.engine_for(shadow, config.replace(interval=1)), inputs)
    n_full = len(config.full_steps_for(args.steps))
    average = (n_full * full + (args.steps - n_full) * cached) / args.steps
    record = dict(
        args={k: str(v) for k, v in vars(args).items()}, config=config.__dict__, setting=folder.name,
        samples=args.samples, npz=merged.name, full_steps=n_full, gmacs_full=full / 1e9,
        gmacs_cached=cached / 1e9, gmacs_per_step=average / 1e9, mac_speedup=full / average,
        **throughput(folder, range(0, args.samples, args.shard)), env=files.environment(),
    )  # fmt: skip
    files.write_json(folder / "run.json", record)
    speed = record["images_per_second"]
    speed = "throughput: no shard timed" if speed is None else f"{speed:.3f} images/s"
    print(f"wrote {merged} ({args.samples} images; {average / 1e9:.2f} GMACs per step, "
          f"{record['mac_speedup']:.2f}x MAC bound; {speed})")  # fmt: skip


def main(argv=None) -> int:
    return exit_status(run, parse_args(argv), (ValueError, TypeError, FileNotFoundError, ImportError))


if __name__ == "__main__":
    sys.exit(main())
