#!/usr/bin/env python
"""Seed-compatible entry point: decode the compressed PointNet and evaluate it.

    python scripts/decode_and_evaluate_pointnet.py --data-dir ./ModelNet40

Reads ``results/compressed_pointnet.ecz`` written by ``train_and_compress_pointnet.py`` (same
data flags; the point count is taken from the stored model).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_and_compress_pointnet import load_data, parser  # noqa: E402  (one home for the flags)


def main(argv=None) -> int:
    p = parser()
    p.add_argument("--container", default=None, help="container to read (default: results/compressed_pointnet.ecz)")
    args = p.parse_args(argv)
    from edgecomp import store
    from edgecomp.errors import EdgecompError
    from edgecomp.zoo import evaluate

    path = args.container or os.path.join(args.results, "compressed_pointnet.ecz")
    try:
        model = store.load_compressed(path)
        points = model.inputs[0].shape[1]
        if points is not None:
            args.num_points = int(points)
        ds = load_data(args)
        model.summary()
        print(f"val acc: {evaluate(model, ds.x_test, ds.y_test)['accuracy']:.4f}")
    except EdgecompError as exc:
        print(f"decode_and_evaluate_pointnet: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
