#!/usr/bin/env python
"""Do two versions of edgecomp write the same container for the same settings and seed?

    python scripts/check_container_bytes.py --ref f68c70e --out docs/results/recipe/bytes.json

Checks out ``--ref`` into a temporary git worktree, then runs the same compressions (the seed's
method, and Deep Compression settings from bench_storage's table, on a VGG-like net of width 0.25
trained 1 epoch on 3,000 Fashion-MNIST images) once with that tree and once with this one, each in
a fresh process, through the public ``compress(model, data, **options)`` call both versions have.
For each it compares the SHA-256 of the whole container and of its weight streams (every tensor
record's coded bytes), and reports the container metadata when the whole files differ.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "seed 0.8": {"rate": 0.8},
    "deep 0.95 global iterative:2 conv=6,dense=4 huffman cosine": {
        "rate": 0.95, "method": "deep", "criterion": "global", "schedule": "iterative:2", "bits": "conv=6,dense=4",
        "lr_schedule": "cosine", "coder": "huffman"},
    "deep 0.9 filter fc1=0.95 density index-bits 5": {
        "rate": 0.9, "method": "deep", "layer_rates": {"fc1": 0.95}, "schedule": "iterative:2", "init": "density",
        "index_bits": 5},
}

# Runs inside each tree: prints one JSON line {case: {sha256, streams_sha256, bytes, info}}.
WORKER = r'''
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
import keras, edgecomp
from edgecomp import codec, train
from edgecomp.pipeline import compress
cases = json.loads(sys.argv[2])
ds = edgecomp.load_dataset("fashion_mnist").take(3000, 500)
out = {}
for name, options in cases.items():
    keras.utils.set_random_seed(0)
    model = edgecomp.build_model("vgg", ds.input_shape, ds.num_classes, width=0.25)
    train.fit(model, ds.x_train, ds.y_train, epochs=1, verbose=0)
    data = compress(model, ds, verbose=0, **options).container
    streams = b"".join(b"".join(rec.streams) for rec in codec.tensor_records(data))
    out[name] = {"sha256": hashlib.sha256(data).hexdigest(), "streams_sha256": hashlib.sha256(streams).hexdigest(),
                 "bytes": len(data), "info": codec.decode_weights(data)[0]["info"]}
print(json.dumps(out))
'''


def run_tree(tree: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", WORKER, str(tree), json.dumps(CASES)], capture_output=True,
                          text=True, cwd=tree, timeout=3600, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"check_container_bytes: the run in {tree} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", required=True, help="the git revision to compare with (e.g. the commit before a change)")
    p.add_argument("--out", default=None, help="write the comparison as JSON here")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from edgecomp import io

    with tempfile.TemporaryDirectory(prefix="edgecomp-ref-") as tmp:
        tree = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.ref], check=True,
                       capture_output=True)
        try:
            ref = run_tree(tree)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    head = run_tree(ROOT)
    rows = {}
    for name in CASES:
        a, b = ref[name], head[name]
        rows[name] = {"ref_bytes": a["bytes"], "head_bytes": b["bytes"], "same_file": a["sha256"] == b["sha256"],
                      "same_weight_streams": a["streams_sha256"] == b["streams_sha256"],
                      "ref_sha256": a["sha256"], "head_sha256": b["sha256"],
                      "ref_info": a["info"], "head_info": b["info"]}
        print(f"{name}: file {'identical' if rows[name]['same_file'] else 'differs'} "
              f"({a['bytes']:,} -> {b['bytes']:,} B), weight streams "
              f"{'identical' if rows[name]['same_weight_streams'] else 'DIFFER'}")
        if not rows[name]["same_file"] and rows[name]["same_weight_streams"]:
            print(f"   only the metadata differs: {json.dumps(a['info'])[:90]}... -> {json.dumps(b['info'])[:90]}...")
    if args.out:
        io.write_json(args.out, {"ref": args.ref, "cases": rows})
    return 0 if all(r["same_weight_streams"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
