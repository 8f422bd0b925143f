#!/usr/bin/env python
"""Seed-compatible entry point: train the seed's U-Net for person segmentation, prune it per
filter, fine-tune with masks held, and store it as a compressed container.

    python scripts/train_and_compress_unet.py --compress-rate 0.8 --data-dir ../../datasets
    python scripts/train_and_compress_unet.py --compress-rate 0.8 --data synthetic_segmentation --size 64 --width 0.25

The real data is the seed's layout: ``seg_train.txt`` / ``seg_test.txt`` (``image_path mask_path``
per line, relative to ``--data-dir``; found in ``--data-dir`` or ``--data-dir/data``, or given with
``--train-list`` / ``--test-list``). Writes ``results/unet_weights.keras`` (the trained net) and
``results/compressed_unet.ecz``; ``scripts/decode_and_evaluate_unet.py`` reads the latter.
"val acc" is pixel accuracy, as in the seed; mean IoU is printed beside it.
A thin wrapper over :func:`edgecomp.compress`.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compress-rate", type=float, default=0.9)
    p.add_argument("--data", default="person_seg",
                   help="person_seg (the seed's list files) or synthetic_segmentation (offline)")
    p.add_argument("--data-dir", default=None, help="dataset root the list files' paths are relative to")
    p.add_argument("--train-list", default=None, help="train list file (default: seg_train.txt in --data-dir[/data])")
    p.add_argument("--test-list", default=None, help="test list file (default: seg_test.txt in --data-dir[/data])")
    p.add_argument("--size", type=int, default=256, help="letterbox size (the seed: 256)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (the seed's net: 1.0)")
    p.add_argument("--n-train", type=int, default=None, help="use only the first N training samples")
    p.add_argument("--n-test", type=int, default=None, help="use only the first N test samples")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (the seed trained 50 on a GPU)")
    p.add_argument("--fine-tune-epochs", type=int, default=2, help="masked fine-tuning epochs (the seed used 20)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-4, help="Adam learning rate (the seed's: 1e-4)")
    p.add_argument("--results", default="results", help="output folder (default: results)")
    return p


def load_data(args):
    """The dataset the flags name (only the options it takes are passed)."""
    from edgecomp.data import load_dataset

    options = {"size": args.size}
    if args.data in ("person_seg", "seg"):
        options.update(train_list=args.train_list, test_list=args.test_list)
    for key in ("n_train", "n_test"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    ds = load_dataset(args.data, data_dir=args.data_dir, **options)
    return ds.take(args.n_train, args.n_test)


def report(label: str, scores: dict) -> str:
    return f"{label}: val acc {scores['accuracy']:.4f}, mean IoU {scores['mean_iou']:.4f}"


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from edgecomp import io, train
    from edgecomp.errors import EdgecompError
    from edgecomp.models import build_model
    from edgecomp.pipeline import compress
    from edgecomp.pruning import check_rate
    from edgecomp.zoo import evaluate

    try:
        check_rate(args.compress_rate)
        out = io.ensure_dir(args.results)
        ds = load_data(args)
        if ds.task != "segmentation":
            raise EdgecompError(f"dataset '{ds.name}' is not a segmentation set",
                                fix="use --data person_seg or synthetic_segmentation")
        model = build_model("unet", ds.input_shape, ds.num_classes, width=args.width)
        model.summary()
        train.fit(model, ds.x_train, ds.y_train, epochs=args.epochs, batch_size=args.batch_size,
                  learning_rate=args.learning_rate)
        print(report("trained", evaluate(model, ds.x_test, ds.y_test, task="segmentation")))
        with io.atomic_path(out / "unet_weights.keras") as tmp:
            model.save(tmp)
        result = compress(model, ds, rate=args.compress_rate, fine_tune_epochs=args.fine_tune_epochs,
                          batch_size=args.batch_size,
                          info={"model": "unet", "data": args.data, "width": args.width, "size": args.size})
        path = out / "compressed_unet.ecz"
        result.save(path)
        print(report("after pruning and fine-tuning", evaluate(result.model, ds.x_test, ds.y_test,
                                                              task="segmentation")))
        print(f"saved {path}: {result.bytes:,} bytes, {result.nonzeros:,} of {result.params:,} params kept")
    except EdgecompError as exc:
        print(f"train_and_compress_unet: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
