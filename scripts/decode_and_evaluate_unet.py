#!/usr/bin/env python
"""Seed-compatible entry point: decode the compressed U-Net and evaluate it.

    python scripts/decode_and_evaluate_unet.py --data-dir ../../datasets

Reads ``results/compressed_unet.ecz`` written by ``train_and_compress_unet.py`` (same data flags)
and prints pixel accuracy ("val acc", as in the seed) and mean IoU.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_and_compress_unet import load_data, parser, report  # noqa: E402  (one home for the flags)


def main(argv=None) -> int:
    p = parser()
    p.add_argument("--container", default=None, help="container to read (default: results/compressed_unet.ecz)")
    args = p.parse_args(argv)
    from edgecomp import store
    from edgecomp.errors import EdgecompError
    from edgecomp.zoo import evaluate

    path = args.container or os.path.join(args.results, "compressed_unet.ecz")
    try:
        model = store.load_compressed(path)
        want = tuple(model.inputs[0].shape[1:3])
        if want[0] is not None and args.size != want[0]:
            args.size = int(want[0])  # the letterbox size the net was trained at
        if args.data in ("person_seg", "seg") and args.n_train is None:
            args.n_train = 1  # only the test split is scored; don't read the training images
        ds = load_data(args)
        model.summary()
        print(report("decoded", evaluate(model, ds.x_test, ds.y_test, task="segmentation")))
    except EdgecompError as exc:
        print(f"decode_and_evaluate_unet: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
