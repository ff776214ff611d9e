"""Run a model without and with DeepCache, back to back, and report speed, MACs and fidelity.

The default is the MNIST DDPM trained here and shipped in ``assets/ddpm-mnist`` (100 DDIM steps, the
paper's DDPM setting). Other ``--model_type``s load their weights from ``--model`` (a local folder or a
hub id). Outputs go to ``--output``: a side-by-side PNG (left baseline, right DeepCache, same seeds;
video frames in rows) and a JSON with the resolved configuration, the results and library versions.

Example:
    python main.py
    python main.py --cache_interval 10 --cache_branch_id 0 --batch_size 32
    python main.py --model_type sd1.5 --model /weights/sd-v1-5 --prompt "a red fox" --batch_size 1
    python main.py --model_type svd --model /weights/svd-xt --image input.png --frames 14
"""

import sys

from cachediff import cli


def main(argv=None) -> int:
    return cli.main(argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
