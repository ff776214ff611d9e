"""Stable Diffusion 1.x/2.x (text-to-image, img2img, inpainting) without and with DeepCache.

The counterpart of the official ``stable_diffusion.py``: both runs back to back with the same seeds
(one warm-up, then interleaved timed repeats, medians), the speedup, MACs and fidelity, a side-by-side
PNG and ``run.json``.

Example:
    python stable_diffusion.py --model runwayml/stable-diffusion-v1-5 --prompt "a red fox in snow"
    python stable_diffusion.py --model_type sd2.1 --model /weights/sd-2-1 --cache_interval 3
    python stable_diffusion.py --model_type sd-inpaint --model /weights/sd-inpaint --image in.png --mask m.png
"""

import sys

from cachediff import cli


def main(argv=None) -> int:
    return cli.main(
        argv,
        doc=__doc__,
        model_types=("sd1.5", "sd2.1", "sd-img2img", "sd-inpaint", "tiny-sd"),
        default="sd1.5",
    )


if __name__ == "__main__":
    sys.exit(main())
