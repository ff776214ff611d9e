"""Stable Video Diffusion (image-to-video) without and with DeepCache.

Both runs go back to back with the same seeds (warm-up, interleaved timed repeats, medians); saves
``baseline.gif`` and ``deepcache.gif``, a frame strip PNG and ``run.json``.

Example:
    python stable_video_diffusion.py --model stabilityai/stable-video-diffusion-img2vid-xt --image in.png
    python stable_video_diffusion.py --model /weights/svd --frames 14 --steps 25 --batch_size 1
"""

import sys

from cachediff import cli


def main(argv=None) -> int:
    return cli.main(argv, doc=__doc__, model_types=("svd",), default="svd")


if __name__ == "__main__":
    sys.exit(main())
