#!/usr/bin/env python
"""Seed-compatible entry point: decode a compressed container and evaluate it.

    python scripts/decode_and_evaluate_cnn.py --model vgg --data c10

Reads ``results/compressed_<name>.ecz`` written by ``train_and_compress_cnn.py`` (same flags).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_and_compress_cnn import parser, save_name  # noqa: E402  (one home for the seed's flags)


def main(argv=None) -> int:
    p = parser()
    p.add_argument("--container", default=None, help="container to read (default: results/compressed_<name>.ecz)")
    args = p.parse_args(argv)
    from edgecomp import store, train
    from edgecomp.data import load_dataset
    from edgecomp.errors import EdgecompError

    path = args.container or os.path.join(args.results, f"compressed_{save_name(args)}.ecz")
    try:
        model = store.load_compressed(path)
        ds = load_dataset(args.data, data_dir=args.data_dir)
        model.summary()
        print(f"val acc: {train.evaluate(model, ds.x_test, ds.y_test):.4f}")
    except EdgecompError as exc:
        print(f"decode_and_evaluate_cnn: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
