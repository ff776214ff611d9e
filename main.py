"""Run a model without and with DeepCache, back to back, and report speed, MACs and fidelity.

The default is the tiny Stable Diffusion trained here on Fashion-MNIST and shipped in
``assets/tiny-sd``: one prompt per class ("a photo of a {class}"), 50 PLMS steps with classifier-free
guidance, DeepCache at the paper's SD setting (N = 5, paper branch 2 = id 1), and the class score of
both runs (the shipped classifier's mean probability of the prompted class). ``--model_type
ddpm-mnist`` is the MNIST DDPM trained here (100 DDIM steps, the paper's DDPM setting). Other
``--model_type``s load their weights from ``--model`` (a local folder or a hub id). Outputs go to
``--output``: a PNG with the baseline row above the DeepCache row (same seeds, columns labelled with
their prompts; video frames side by side) and a JSON with the resolved configuration, the results and
library versions.

Example:
    python main.py
    python main.py --prompt "a photo of a bag"
    python main.py --model_type ddpm-mnist --cache_interval 10 --cache_branch_id 0 --batch_size 32
    python main.py --model_type sd1.5 --model /weights/sd-v1-5 --prompt "a red fox" --batch_size 1
    python main.py --model_type svd --model /weights/svd-xt --image input.png --frames 14
"""

import sys

from cachediff import cli


def main(argv=None) -> int:
    return cli.main(argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
