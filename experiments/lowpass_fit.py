"""Experiment (issue 27, a negative result): the shallow fit on a low-passed probe.

``DeepCacheConfig(reuse="forecast", time="shallow" | "anchored")`` fits the forecast's weights to the
shallow feature (``cachediff.acts.fitted_weights``). On the tiny SD with DPM-Solver++ the fitted weights
depart from the timestep's at high noise, where the latent the shallow feature sees is mostly noise
(docs/SOLVERS.md, section 3). If the noise rules the least squares there, fitting on the probe averaged
over k x k pixels should help. This runs ``scripts/sweep.py`` (the arguments after ``--``) with the
fit replaced by the same fit on ``avg_pool2d(probe, k)``; compare its samples with the sweep's own,
paired, with ``scripts/report_solvers.py`` or by reading both folders.

Example (2026-12-07: 100 seeds; docs/SOLVERS.md quotes what it printed):
    python experiments/lowpass_fit.py --pool 2 --against runs/solvers/dpmpp-25 \
        --converged runs/converged/converged-dpmpp2m-trailing/dpmpp2m-trailing-100 -- \
        --model_type tiny-sd --scheduler DPMSolverMultistepScheduler --timestep-spacing trailing \
        --steps 25 --branch 0 --intervals 2 3 5 --suites steps interval fit \
        --only N2-b0-f3-shallow N3-b0-f3-shallow N5-b0-f3-shallow N3-b0-f3-anchored \
        --samples 100 --shard 100 --batch 16 --fidelity-images 100 --converged-steps 100 \
        --converged-out runs/converged --repeats 0 --out runs/lowpass-2 --results runs/lowpass-2.csv

With ``--against`` (the plain sweep's ``--out``, which holds the same settings and their timestep twins
on the same seeds) it then prints, per fitted setting, the paired difference of mean per-image PSNR to
the converged solution: low-passed minus plain fit, and low-passed minus the timestep forecast.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import torch

import cachediff.acts as acts
from cachediff import metrics


def pooled(probe: torch.Tensor, k: int) -> torch.Tensor:
    """The probe averaged over k x k pixels (an image-shaped feature; anything else as it is).

    Example:
        >>> pooled(torch.arange(16.0).reshape(1, 1, 4, 4), 2).flatten().tolist()
        [2.5, 4.5, 10.5, 12.5]
    """
    return torch.nn.functional.avg_pool2d(probe, k) if probe.ndim == 4 and k > 1 else probe


def lowpassed(fit, k: int):
    """``fit`` (``cachediff.acts.fitted_weights``) on the probes pooled by ``k``.

    Example (the fresh probe shares no pixel with the newer kept one, but its mean is halfway):
        >>> p0, p1 = torch.zeros(1, 1, 2, 2), torch.tensor([[[[2.0, 0], [0, 0]]]])
        >>> probe = torch.tensor([[[[0.0, 0], [0, 1]]]])
        >>> [round(w.item(), 4) for w in acts.fitted_weights((p0, p1), probe)]
        [1.0, 0.0]
        >>> [round(w.item(), 4) for w in lowpassed(acts.fitted_weights, 2)((p0, p1), probe)]
        [0.5, 0.5]
    """

    def fitted_weights(probes, probe, times=None, t=0.0):
        return fit(tuple(pooled(p, k) for p in probes), pooled(probe, k), times, t)

    return fitted_weights


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", type=int, required=True, help="k: fit on the probe averaged over k x k pixels")
    p.add_argument("--against", type=Path, help="the plain sweep's --out: compare with its samples")
    p.add_argument("--converged", type=Path, help="with --against: the converged reference's sample folder")
    p.add_argument("sweep", nargs="*", help="after --: the arguments of scripts/sweep.py")
    args = p.parse_args(argv)
    if args.pool < 1:
        p.error(f"--pool must be >= 1, got {args.pool}")
    if (args.against is None) != (args.converged is None):
        p.error("--against and --converged go together")
    acts.fitted_weights = lowpassed(acts.fitted_weights, args.pool)
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    sys.argv = [str(scripts / "sweep.py"), *args.sweep]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as done:
        if done.code:
            raise
    if args.against:
        sys.path.insert(0, str(scripts))
        compare(args.against, args.converged, sweep_out(args.sweep))


def sweep_out(sweep_args: list[str]) -> argparse.Namespace:
    """The sweep's --out and --fidelity-images."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fidelity-images", type=int, required=True)
    return parser.parse_known_args(sweep_args)[0]


def compare(against: Path, converged: Path, sweep) -> None:
    """Paired differences of the fitted settings in ``sweep.out`` from the same setting and its
    timestep twin in ``against``, over the sweep's fidelity seeds."""
    from report_solvers import psnr_per_image, read_samples  # scripts/: on the path above

    n = sweep.fidelity_images
    reference = read_samples(converged, n)
    for folder in sorted(sweep.out.glob("N*-shallow")) + sorted(sweep.out.glob("N*-anchored")):
        mine = psnr_per_image(read_samples(folder, n), reference)
        line = f"{folder.name}, fitted on the pooled probe: {mine.mean():.2f} dB"
        for name in (folder.name, folder.name.rsplit("-", 1)[0] + "-timestep"):
            other = psnr_per_image(read_samples(against / name, n), reference)
            line += f"; minus {name} of --against: {metrics.mean_interval(mine - other)}"
        print(line)


if __name__ == "__main__":
    main()
