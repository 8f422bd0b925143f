"""Per-layer sensitivity: how much accuracy each layer loses when pruned or shared alone.

Each prunable weight is pruned alone at several rates, and weight-shared alone at several
bit widths, without fine-tuning; the drop in accuracy is measured on a held-out slice.

    >>> table = analyze(model, x_val, y_val)
    >>> table["layers"][0]["prune"]["0.9"]       # accuracy drop (points) at rate 0.9

The budgeted search (:mod:`edgecomp.budget`) reads these curves.
"""

from __future__ import annotations

import numpy as np

from edgecomp import train
from edgecomp.report import png_bytes
from edgecomp.pruning import check_rate, filter_mask, prunable_weights
from edgecomp.weight_sharing import share_tensor

RATES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
BITS = (8, 6, 5, 4, 3, 2)


def analyze(model, x_val, y_val, *, rates=RATES, bits=BITS, progress: bool = True) -> dict:
    """Measure each prunable weight's accuracy drop (percentage points) per rate and per bit width."""
    from tqdm import tqdm

    from edgecomp.errors import EdgecompError
    from edgecomp.structured import count_macs

    rates = [check_rate(r) for r in rates]
    base = train.evaluate(model, x_val, y_val)
    found = prunable_weights(model, skip_first=False)
    try:
        macs = count_macs(model)[0]          # by layer path, beside each layer's parameters
    except EdgecompError:
        macs = {}
    rows = []
    bar = tqdm(total=len(found) * (len(rates) + len(bits)), desc="sensitivity", unit="eval", disable=not progress)
    for var, axes in found:
        original = var.numpy().copy()
        row = {"name": var.path, "params": int(original.size), "macs": macs.get(var.path.rsplit("/", 1)[0]),
               "prune": {}, "bits": {}}
        for r in rates:
            var.assign(original * filter_mask(original, r, axes))
            row["prune"][str(r)] = 100 * (base - train.evaluate(model, x_val, y_val))
            bar.update(1)
        for b in bits:
            var.assign(share_tensor(original, b).weights())
            row["bits"][str(b)] = 100 * (base - train.evaluate(model, x_val, y_val))
            bar.update(1)
        var.assign(original)
        rows.append(row)
    bar.close()
    return {"baseline_accuracy": base, "n_val": int(len(x_val)), "rates": rates, "bits": list(bits),
            "layers": rows}


def markdown(table: dict) -> str:
    rates, bits = table["rates"], table["bits"]
    head = ["layer", "params", "layer MACs"] + [f"prune {r}" for r in rates] + [f"{b} bits" for b in bits]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["layers"]:
        macs = row.get("macs")
        cells = [row["name"], f"{row['params']:,}", "-" if macs is None else f"{macs:,}"]
        cells += [f"{row['prune'][str(r)]:+.2f}" for r in rates]
        cells += [f"{row['bits'][str(b)]:+.2f}" for b in bits]
        lines.append("| " + " | ".join(cells) + " |")
    return (f"Accuracy drop in points when one layer alone is pruned (per filter) or weight-shared, "
            f"without fine-tuning; baseline {100 * table['baseline_accuracy']:.2f}% on "
            f"{table['n_val']} held-out samples.\n\n" + "\n".join(lines) + "\n")


def plot(table: dict) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for row in table["layers"]:
        a.plot(table["rates"], [row["prune"][str(r)] for r in table["rates"]], marker="o", label=row["name"])
        b.plot(table["bits"], [row["bits"][str(x)] for x in table["bits"]], marker="o", label=row["name"])
    a.set_xlabel("pruning rate (this layer alone)")
    b.set_xlabel("weight-sharing bits (this layer alone)")
    b.invert_xaxis()
    for ax in (a, b):
        ax.set_ylabel("accuracy drop (points)")
        ax.grid(True, alpha=0.3)
    a.legend(fontsize=6, ncol=2)
    fig.suptitle("Per-layer sensitivity")
    return png_bytes(fig, dpi=100)
