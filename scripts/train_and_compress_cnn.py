#!/usr/bin/env python
"""Seed-compatible entry point: train a CNN, prune it per filter, fine-tune with masks held,
and store it as a compressed container.

    python scripts/train_and_compress_cnn.py --model vgg --data c10 --compress-rate 0.8

Writes ``results/<name>_weights.keras`` (the trained net) and ``results/compressed_<name>.ecz``,
where ``<name>`` is ``vgg_c10`` etc. ``scripts/decode_and_evaluate_cnn.py`` reads the latter.
A thin wrapper over :func:`edgecomp.compress`.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def save_name(args) -> str:
    if args.model == "resnet":
        return f"resnet_{args.depth}_{args.wide_factor}_{args.data}"
    if args.model == "densenet":
        return f"densenet_{args.depth}_{args.growth_rate}_{args.data}"
    return f"{args.model}_{args.data}"


def model_options(args) -> dict:
    return {"resnet": {"depth": args.depth, "wide_factor": args.wide_factor},
            "densenet": {"depth": args.depth, "growth_rate": args.growth_rate}}.get(args.model, {})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="c10", help="c10 (CIFAR-10), c100 (CIFAR-100) or any edgecomp dataset name")
    p.add_argument("--model", default="vgg")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--growth-rate", type=int, default=12, help="growth rate for densenet")
    p.add_argument("--wide-factor", type=int, default=1, help="wide factor for WRN")
    p.add_argument("--compress-rate", type=float, default=0.9)
    p.add_argument("--epochs", type=int, default=20, help="training epochs (the seed trained 200 on a GPU)")
    p.add_argument("--fine-tune-epochs", type=int, default=3, help="masked fine-tuning epochs (the seed used 30)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--results", default="results", help="output folder (default: results)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from edgecomp import io, train
    from edgecomp.data import load_dataset
    from edgecomp.errors import EdgecompError
    from edgecomp.models import build_model
    from edgecomp.pipeline import compress
    from edgecomp.pruning import check_rate

    try:
        check_rate(args.compress_rate)
        out = io.ensure_dir(args.results)
        ds = load_dataset(args.data, data_dir=args.data_dir)
        model = build_model(args.model, ds.input_shape, ds.num_classes, **model_options(args))
        model.summary()
        name = save_name(args)
        train.fit(model, ds.x_train, ds.y_train, epochs=args.epochs, batch_size=args.batch_size)
        print(f"val acc: {train.evaluate(model, ds.x_test, ds.y_test):.4f}")
        with io.atomic_path(out / f"{name}_weights.keras") as tmp:
            model.save(tmp)
        result = compress(model, ds, rate=args.compress_rate, fine_tune_epochs=args.fine_tune_epochs,
                          batch_size=args.batch_size, info={"model": args.model, "data": args.data})
        path = out / f"compressed_{name}.ecz"
        result.save(path)
        print(f"val acc after pruning and fine-tuning: {train.evaluate(result.model, ds.x_test, ds.y_test):.4f}")
        print(f"saved {path}: {result.bytes:,} bytes, {result.nonzeros:,} of {result.params:,} params kept")
    except EdgecompError as exc:
        print(f"train_and_compress_cnn: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
