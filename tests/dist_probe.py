"""Run by tests/test_distribute.py in a fresh process (the CPU is split before TensorFlow starts).

``python tests/dist_probe.py mirrored``: on a CPU split into 2 logical devices, the same masked
fine-tuning and the same centroid fine-tuning run once on one device and once under
MirroredStrategy on both; prints JSON: the largest difference between the two, whether the two
replicas' copies of every variable are identical, and the pruned weights that are not 0.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def mirrored() -> dict:
    import numpy as np

    from edgecomp import distribute, pruning, train, weight_sharing
    from edgecomp.models import build_model

    cfg = distribute.Distribute("mirrored", cpu_devices=2, check_masks=True)
    distribute.strategy_for(cfg)            # splits the CPU before anything runs
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (256, 28, 28, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) * 40).astype("int64") % 10
    base = build_model("vgg", (28, 28, 1), 10, width=0.125, dropout=0.0)   # no dropout: one random stream
    train.fit(base, x, y, epochs=1, batch_size=32, verbose=0)
    masks = pruning.compute_masks(base, 0.8)
    shared0 = weight_sharing.share_weights(base, bits={"conv": 4, "dense": 3})
    start = base.get_weights()

    def run(ses):
        model = build_model("vgg", (28, 28, 1), 10, width=0.125, dropout=0.0)
        model = ses.adopt(model) if ses else model
        model.set_weights(start)
        with pruning.hold_masks(model, masks):
            train.fit(model, x, y, epochs=1, batch_size=32, seed=1, verbose=0)   # check_masks: counted per step
        after_fit = model.get_weights()
        model.set_weights(start)
        shared = copy.deepcopy(shared0)
        weight_sharing.fine_tune_centroids(model, shared, x, y, epochs=1, batch_size=32, learning_rate=1e-3,
                                           seed=2, verbose=0)
        return model, after_fit, {p: st.codebook for p, st in shared.items()}

    _, fit1, books1 = run(None)
    with distribute.session(cfg) as ses:
        model2, fit2, books2 = run(ses)
        replicas_equal = all(all(np.array_equal(v.value.values[0].numpy(), c.numpy()) for c in v.value.values)
                             for v in model2.weights)
        pruned_nonzero = ses.mask_nonzero
        steps = ses.mask_steps
    return {"replicas": ses.replicas,
            "fit_max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(fit1, fit2)),
            "fit_max_weight": max(float(np.max(np.abs(a))) for a in fit1),
            "codebook_max_diff": max(float(np.max(np.abs(books1[p] - books2[p]))) for p in books1),
            "codebook_moved": max(float(np.max(np.abs(books1[p] - shared0[p].codebook))) for p in books1),
            "replicas_equal": bool(replicas_equal), "mask_steps": steps, "pruned_nonzero": pruned_nonzero}


if __name__ == "__main__":
    print("RESULT " + json.dumps({"mirrored": mirrored}[sys.argv[1]]()))
