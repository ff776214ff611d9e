"""Pictures written for people to judge: the labelled grid of main.py and the reports."""

from __future__ import annotations

import numpy as np
import torch

from cachediff.files import labelled_grid


def test_labelled_grid_draws_rows_in_order_enlarged_under_their_labels():
    black, white = torch.full((3, 1, 32, 32), -1.0), torch.ones(3, 1, 32, 32)
    labels = ["a photo of a t-shirt", "a photo of a ankle boot", "bag"]
    a = labelled_grid({"baseline": black, "DeepCache": white}, labels, tile=128)
    grey = a.mean(-1)
    dark_rows = np.flatnonzero((grey < 10).sum(1) > 3 * 100)  # image rows crossing three black tiles
    assert len(dark_rows) == 128  # one row of tiles, enlarged 4x
    x0 = np.flatnonzero((grey < 10).sum(0) >= 128)[0]  # where the tiles begin
    light = grey[dark_rows[-1] + 1 :, x0:]
    assert (light > 245).all(axis=1).sum() >= 128  # below it the white tiles (and white margins)
    header = grey[: dark_rows[0]]
    assert (header < 128).sum() > 200  # the prompts are written above the tiles
    assert (grey[dark_rows[0] :, :x0] < 128).sum() > 50  # and the row names to the left


def test_labelled_grid_keeps_colour():
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(2, 3, 16, 16)
    a = labelled_grid({"baseline": red, "DeepCache": red}, ["seed 0", "seed 1"], tile=32)
    assert ((a[..., 0] == 255) & (a[..., 1] == 0)).sum() == 4 * 32 * 32


def test_a_claim_holds_while_its_process_lives_and_passes_on_when_it_is_gone(tmp_path):
    import os
    import platform
    import subprocess
    import sys

    from cachediff.files import claim, release

    shard = tmp_path / "samples_000000.npy"
    marker = tmp_path / ".samples_000000.npy.claim"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        marker.write_text(f"{platform.node()} {other.pid}")  # another live sweep holds it
        assert not claim(shard) and marker.read_text().endswith(str(other.pid))
    finally:
        other.kill()
        other.wait()
    assert claim(shard) and marker.read_text().endswith(str(os.getpid()))  # its process is gone
    release(shard)
    assert not marker.exists() and claim(shard)


def test_a_row_name_of_several_lines_takes_the_width_of_its_longest_line():
    """The cached row's label names N, the cut, the schedule, the act and the PSNR on four lines
    (issue 31: it said "DeepCache" for the zeros ablation and for forecasts alike)."""
    from cachediff import DeepCacheConfig
    from cachediff.cli import setting_label

    images, labels = torch.zeros(1, 1, 8, 8), ["a"]
    label = setting_label(DeepCacheConfig(5, 2, reuse="zeros"), object(), 12.34)
    assert label.splitlines() == [
        "DeepCache N = 5",
        "branch 2 (paper 3)",
        "uniform, zeros (ablation)",
        "PSNR 12.3 dB",
    ]
    stacked = labelled_grid({label: images}, labels, tile=32)
    one_line = labelled_grid({label.replace("\n", " "): images}, labels, tile=32)
    assert stacked.shape[1] < one_line.shape[1] - 100  # narrower: the lines are stacked, not joined
