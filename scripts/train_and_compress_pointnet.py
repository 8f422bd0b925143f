#!/usr/bin/env python
"""Seed-compatible entry point: train the seed's PointNet on ModelNet40 (with its rotation and
jitter augmentation), prune it per filter, fine-tune with masks held, and store it compressed.

    python scripts/train_and_compress_pointnet.py --compress-rate 0.8 --data-dir ./ModelNet40
    python scripts/train_and_compress_pointnet.py --compress-rate 0.8 --data synthetic_pointclouds --num-points 256 --width 0.25

The real data is ``ply_data_train*.h5`` / ``ply_data_test*.h5`` (in ``--data-dir``, its
``modelnet40_ply_hdf5_2048/`` or ``ModelNet40/``, or ``$EDGECOMP_DATA``). Writes
``results/pointnet_weights.keras`` and ``results/compressed_pointnet.ecz``;
``scripts/decode_and_evaluate_pointnet.py`` reads the latter. As in the seed the first conv stays
dense. Training uses the augmentation; the masked fine-tuning (:func:`edgecomp.compress`) uses
the plain clouds. A thin wrapper over the library.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compress-rate", type=float, default=0.9)
    p.add_argument("--data", default="modelnet40", help="modelnet40 (HDF5 files) or synthetic_pointclouds (offline)")
    p.add_argument("--data-dir", default=None, help="folder with ply_data_train*.h5 / ply_data_test*.h5")
    p.add_argument("--num-points", type=int, default=2048, help="points per cloud (the seed: 2048)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (the seed's net: 1.0)")
    p.add_argument("--n-train", type=int, default=None, help="use only the first N training clouds")
    p.add_argument("--n-test", type=int, default=None, help="use only the first N test clouds")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (the seed trained 80 on a GPU)")
    p.add_argument("--fine-tune-epochs", type=int, default=3, help="masked fine-tuning epochs (the seed used 20)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-augment", action="store_true", help="train without rotation and jitter")
    p.add_argument("--results", default="results", help="output folder (default: results)")
    return p


def load_data(args):
    from edgecomp.data import load_dataset

    options = {"num_points": args.num_points}
    if args.data not in ("modelnet40", "m40"):
        options.update({k: getattr(args, k) for k in ("n_train", "n_test") if getattr(args, k) is not None})
    return load_dataset(args.data, data_dir=args.data_dir, **options).take(args.n_train, args.n_test)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from edgecomp import io, train
    from edgecomp.data.modelnet40 import augmented_batches
    from edgecomp.errors import EdgecompError
    from edgecomp.models import build_model
    from edgecomp.pipeline import compress
    from edgecomp.pruning import check_rate
    from edgecomp.zoo import evaluate

    try:
        check_rate(args.compress_rate)
        out = io.ensure_dir(args.results)
        ds = load_data(args)
        if ds.x_train.ndim != 3:
            raise EdgecompError(f"dataset '{ds.name}' is not a point-cloud set",
                                fix="use --data modelnet40 or synthetic_pointclouds")
        model = build_model("pointnet", ds.input_shape, ds.num_classes, width=args.width)
        model.summary()
        if args.no_augment:
            train.fit(model, ds.x_train, ds.y_train, epochs=args.epochs, batch_size=args.batch_size)
        else:
            batches = augmented_batches(ds.x_train, ds.y_train, batch_size=args.batch_size)
            train.fit(model, batches, None, epochs=args.epochs, batch_size=args.batch_size)
        print(f"val acc: {evaluate(model, ds.x_test, ds.y_test)['accuracy']:.4f}")
        with io.atomic_path(out / "pointnet_weights.keras") as tmp:
            model.save(tmp)
        result = compress(model, ds, rate=args.compress_rate, fine_tune_epochs=args.fine_tune_epochs,
                          batch_size=args.batch_size,
                          info={"model": "pointnet", "data": args.data, "width": args.width,
                                "num_points": args.num_points})
        path = out / "compressed_pointnet.ecz"
        result.save(path)
        print(f"val acc after pruning and fine-tuning: {evaluate(result.model, ds.x_test, ds.y_test)['accuracy']:.4f}")
        print(f"saved {path}: {result.bytes:,} bytes, {result.nonzeros:,} of {result.params:,} params kept")
    except EdgecompError as exc:
        print(f"train_and_compress_pointnet: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
