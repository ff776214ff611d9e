"""Check the paper's SD 1.5 MACs against the official research code's own U-Net and MAC counter.

Instantiates the vendored U-Net of the ``DeepCache==0.1.1`` package with the SD 1.5 config on the
``meta`` device, counts a full and a cached forward (``cache_layer_id=0, cache_block_id=0``: paper
branch 2) with both ``torch.utils.flop_counter`` and the official ``DeepCache.flops`` counter, and
prints the per-step averages of candidate schedules next to the paper's 130.45 G.

Example:
    python scripts/macs_vendored.py
"""

from __future__ import annotations

import torch

from cachediff.architectures import ARCHITECTURES
from cachediff.metrics import count_macs


def main() -> None:
    # The vendored U-Net imports diffusers 0.24 internals (PositionNet) that later releases renamed:
    # run this in the pinned environment.
    from DeepCache.flops import count_ops_and_params
    from DeepCache.sd.unet_2d_condition import UNet2DConditionModel as VendoredUNet

    _, config = ARCHITECTURES["sd1.5"]
    with torch.device("meta"):
        unet = VendoredUNet(**config).eval()
        inputs = dict(sample=torch.randn(1, 4, 64, 64), timestep=torch.tensor(500))
        text = torch.randn(1, 77, 768)
    cut = dict(quick_replicate=True, cache_layer_id=0, cache_block_id=0, return_dict=False)
    with torch.no_grad():
        _, feature = unet(**inputs, encoder_hidden_states=text, replicate_prv_feature=None, **cut)
    full_kw = dict(encoder_hidden_states=text)
    cached_kw = dict(encoder_hidden_states=text, replicate_prv_feature=feature, **cut)
    counts = {}
    for name, kw in (("full", full_kw), ("cached", cached_kw)):
        counts[name] = (
            count_macs(lambda kw=kw: unet(**inputs, **kw)) / 1e9,
            count_ops_and_params(unet, {**inputs, **kw})[0] / 1e9,
        )
        print(
            f"{name:6s} step: flop_counter {counts[name][0]:.2f} G, official counter {counts[name][1]:.2f} G"
        )
    f, c = counts["full"][1], counts["cached"][1]
    for label, n_full, n_cached in [
        ("N=5", 10, 40),
        ("N=5, PLMS 51 evals", 10, 41),
        ("13 full (N=4)", 13, 37),
    ]:
        avg = (n_full * f + n_cached * c) / (n_full + n_cached)
        print(f"{label:20s}: {avg:.2f} G per step (paper: 130.45 G, {100 * (avg / 130.45 - 1):+.2f}%)")


if __name__ == "__main__":
    main()
