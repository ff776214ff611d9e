"""Stable Diffusion XL (text-to-image, img2img, inpainting) without and with DeepCache.

``--refine`` hands the last 20% of the steps to the SDXL refiner, accelerated as well. Both runs go
back to back with the same seeds (warm-up, interleaved timed repeats, medians); outputs as main.py.

Example:
    python stable_diffusion_xl.py --model stabilityai/stable-diffusion-xl-base-1.0 --prompt "a lighthouse"
    python stable_diffusion_xl.py --model /weights/sdxl-base --refine --refiner /weights/sdxl-refiner
"""

import sys

from cachediff import cli


def main(argv=None) -> int:
    return cli.main(
        argv, doc=__doc__, model_types=("sdxl", "sdxl-img2img", "sdxl-inpaint"), default="sdxl", refine=True
    )


if __name__ == "__main__":
    sys.exit(main())
