"""The Markdown of ``scripts/bench_structured_zoo.py``: the before/after table, the parity misses,
the couplings and the groups kept whole (kept apart so the benchmark script stays readable)."""

from __future__ import annotations

#: The export columns of the table, in order.
COLUMNS = (("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32"), ("onnx", "int8"))

#: Fine-tuning epochs after each structured step, at least (fewer did not recover: with 3 per step
#: densenet ended at 78.9% test accuracy, with 4 at 93.0%, 6 at 98.4%, 8 at 100%; vgg with 4 at 90.6%).
MIN_STRUCTURED_EPOCHS = 8
#: Models given fewer epochs per step than the rule (``{name: epochs}``), should the run need to be
#: shorter; the table then says "reduced from". None now: the whole run takes about 6 minutes on 2
#: shared cores.
REDUCED_EPOCHS: dict[str, int] = {}


def full_structured_epochs(epochs: int) -> int:
    """The rule: as many epochs after each step as the baseline trained, at least 8."""
    return max(MIN_STRUCTURED_EPOCHS, epochs)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _parity(a: dict, rescued: bool = False) -> str:
    if "error" in a:
        return f"**FAIL** (error: {a['error'][:60]})"
    fig = [f"top-1 {_pct(a.get('top1_agreement'))}"]
    if a.get("mask_iou") is not None:
        fig.append(f"IoU {a['mask_iou']:.4f}")
    if a["variant"] == "fp32" and a.get("max_abs_diff") is not None:
        fig.append(f"diff {a['max_abs_diff']:.1g}")
    elif a.get("accuracy_delta") is not None:
        fig.append(f"acc {100 * a['accuracy_delta']:+.1f} pts")
    return ("ok" if a["passed"] else "post-training miss" if rescued else "**FAIL**") + " (" + ", ".join(fig) + ")"


def _cell(a: dict, rescued: bool = False) -> str:
    speed = "" if a.get("speedup") is None else f" ({a['speedup']:.1f}x)"
    return f"{_parity(a, rescued)}, {_ms(a.get('before_ms'))} -> {_ms(a.get('median_ms'))} ms{speed}"


def _short_reason(reason: str) -> str:
    if "reaches the model output" in reason:
        return "model output"
    if "normalizes over the channels" in reason:
        return "softmax over channels"
    if "Dot" in reason:
        return "learned transform (Dot)"
    return reason[:50]


def _train_acc(entry: dict) -> str:
    value = entry.get("accuracy")
    keep = "" if entry.get("keep") is None else f" (keep {entry['keep']:g})"
    return f"{entry.get('stage', '?')}{keep} {'-' if value is None else _pct(value)}"


def kept_whole_cell(row: dict) -> str:
    parts = []
    for g in row["coupling"]["kept_whole"]:
        reasons = list(dict.fromkeys(_short_reason(r) for r in g["reasons"]))
        parts.append(f"{g['name']} ({g['channels']}): {', '.join(reasons)}")
    return "; ".join(parts) or "none"


def epochs_cell(row: dict) -> str:
    """``train / steps x structured`` epochs, flagged when fewer than the default rule gives."""
    text = f"{row['epochs']} / {row['structured_steps']} x {row['structured_epochs']}"
    full = full_structured_epochs(row["epochs"])
    if row["structured_epochs"] < full:
        text += f" (reduced from {full})"
    return text


def table_row(row: dict) -> list[str]:
    """The model's cells of the Markdown table."""
    if "error" in row:
        return [row["model"], f"failed: {row['error'][:120]}"] + [""] * (6 + len(COLUMNS))
    by = {(a["format"], a["variant"]): a for a in row["artifacts"]}
    rescued = {a["format"] for a in row["artifacts"] if a["variant"] == "int8 (QAT)" and a["passed"]}
    cells = [row["model"], epochs_cell(row), f"{row['params_before']:,} / {row['params_after']:,}",
             f"{row['macs_before']:,} / {row['macs_after']:,} ({row['macs_reduction']:.1f}x)",
             f"{_pct(row['before']['accuracy'])} / {_pct(row['after']['accuracy'])}", f"{row['container_bytes']:,}"]
    for fmt, variant in COLUMNS:
        a = by.get((fmt, variant))
        text = "-" if a is None else _cell(a, rescued=variant == "int8" and fmt in rescued)
        for label, key in (("QAT int8", "int8 (QAT)"), ("int16x8", "int16x8")):
            extra = by.get((fmt, key)) if variant == "int8" else None
            if extra is not None:
                text += f"; {label}: {_cell(extra)}"
        cells.append(text)
    cells.append(kept_whole_cell(row))
    return cells


def failures(rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        if "error" in row:
            out.append(f"{row['model']}: the run failed: {row['error']}")
            continue
        rescued = {a["format"] for a in row["artifacts"] if a["variant"] == "int8 (QAT)" and a["passed"]}
        for a in row["baseline_files"] + row["artifacts"]:
            which = "baseline" if a in row["baseline_files"] else "pruned"
            if not a["passed"] and not (which == "pruned" and a["variant"] == "int8" and a["format"] in rescued):
                why = "; ".join(a.get("failures") or []) or a.get("error", "")
                out.append(f"{row['model']} {which} {a['format']} {a['variant']}: {why}")
            if a.get("bench_error"):
                out.append(f"{row['model']} {which} {a['format']} {a['variant']}: benchmark error: {a['bench_error']}")
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    from edgecomp.report import markdown_table

    head = ["model", "epochs: train / structured (steps x each)", "params before / after", "MACs before / after (reduction)", "acc before / after",
            "container B"] + [f"{f.replace('tflite', 'TFLite').replace('onnx', 'ONNX')} {v}: parity, ms before -> "
                              "after (speedup)" for f, v in COLUMNS] + ["groups kept whole (channels): reason"]
    done = [r for r in rows if "error" not in r]
    lines = [
        "# Structured pruning of the model zoo: half the channels, MACs and latency before and after",
        "",
        f"Made by `{meta['command']}`. "
        f"Each model at `scripts/bench_zoo.py`'s small size, on its data ({meta['n_train']} training samples, "
        f"{meta['n_test']} test samples; synthetic stand-ins unless a data folder was given), trained as bench_zoo "
        "trains it (the table's first epochs figure): the *before*. Then the recipe's structured stage alone: it keeps "
        f"{meta['keep']:g} of every dependency group's channels ({meta['importance']} importance) in "
        f"{meta['structured_steps']} steps, each followed by E epochs of fine-tuning with a {meta['lr_schedule']} "
        "learning rate (E in the table: "
        + (f"max({MIN_STRUCTURED_EPOCHS}, the training epochs) for every model, since fewer did not recover the "
           "accuracy (densenet: 78.9% with 3 per step, 93.0% with 4, 98.4% with 6; vgg 90.6% with 4)"
           + ("; " + ", ".join(f"{m} {e}" for m, e in REDUCED_EPOCHS.items())
              + " per step, marked *reduced from*, to keep the run short" if REDUCED_EPOCHS else "")
           if meta.get("structured_epochs") is None else f"--structured-epochs {meta['structured_epochs']}")
        + "). No magnitude pruning on top (rate "
        f"{meta['compress_rate']:g}, {meta['masked_epochs']} masked fine-tuning epochs): the seed's coding stores every "
        "weight of the smaller model as an int8 value in the container (uint8 index gaps). "
        f"`compress(model, ds, Recipe.from_options(channels={meta['keep']:g}, structured_steps={meta['structured_steps']}, "
        f"structured_epochs=E, lr_schedule=\"{meta['lr_schedule']}\", rate={meta['compress_rate']:g}, "
        f"fine_tune_epochs={meta['masked_epochs']}))`. The *after* is the model decoded from the container (its int8 "
        "weights), which is what every *after* file is exported from. "
        "Accuracy on the test samples (segmentation: pixel accuracy). Parity: each file against the Keras model it "
        "was exported from, bench_zoo's rule (the exporters' default thresholds: fp32 max abs diff <= 1e-4 and 100% "
        "top-1 agreement, int8 >= 99% top-1 agreement and at most 0.5 points of accuracy lost; UNet fp32 by mask IoU "
        ">= 0.999; an int8 file that misses is tried again with int16x8 activations and, as `QAT int8`, after quantization-aware training, whose file is checked against the QAT model at 99.5% agreement and -0.3 point). Latency: "
        f"batch 1, 1 thread, each file in a fresh process, {meta['rounds']} interleaved rounds (order reversed every "
        f"other round, {meta['runs']} timed runs per file per round), median of the rounds; *before* is the unpruned "
        "model's fp32 file of the same format (so an int8 cell's speedup includes quantization), the speedup the "
        f"median over rounds of before/after. {meta['machine']}; other jobs shared the CPUs, so absolute times are "
        "noisy; the interleaved ratios less so.",
        "",
        markdown_table(head, [table_row(r) for r in rows], "lrrrrr" + "l" * (len(COLUMNS) + 1)),
        "",
        "## Residual adds, concatenations and BatchNorm",
        "",
        "From each model's dependency groups (`result.structured['groups']`): a group with several producers is "
        "a set of channels an element-wise Add ties together (a residual block: every conv feeding the sum loses the same "
        "channels); a layer whose input rows span several groups consumes a concatenation (each input keeps its "
        "own channels at its offset); a BatchNorm listed in a group loses the same channels as its conv.",
        "",
    ]
    for r in done:
        c = r["coupling"]
        multi = c["multi_producer_producers"]
        add = (f"{c['add_layers']} Add layer(s) -> {len(multi)} group(s) with several producers ("
               + "; ".join(f"{g}: {', '.join(p)}" for g, p in multi.items()) + ")") if c["add_layers"] else "no Add layers"
        cat = (f"{c['concat_layers']} Concatenate layer(s) -> {len(c['concat_consumers'])} consumer(s) whose inputs "
               "span several groups (" + "; ".join(f"{k}: {len(v)} groups" for k, v in c["concat_consumers"].items())
               + ")") if c["concat_layers"] else "no Concatenate layers"
        bn = (f"{c['bn_in_groups']} of {c['bn_layers']} BatchNorm layers pruned with their group "
              f"({c['groups_with_bn']} groups hold one)" if c["bn_layers"] else "no BatchNorm layers")
        if c["bn_not_in_groups"]:
            bn += "; the others follow a group kept whole: " + ", ".join(c["bn_not_in_groups"])
        lines.append(f"- **{r['model']}**: {c['groups']} prunable groups; {add}; {cat}; {bn}.")
    lines += ["", "## Groups kept whole", ""]
    for r in done:
        for g in r["coupling"]["kept_whole"]:
            lines.append(f"- {r['model']} `{g['name']}` ({g['channels']} channels, producers "
                         f"{', '.join(g['producers'])}): " + "; ".join(g["reasons"]))
    fails = failures(rows)
    lines += ["", "## FAIL", ""] + ([f"- {f}" for f in fails] or ["- none"])
    rescued = [f"{r['model']} {a['format']}" for r in done for a in r["artifacts"]
               if a["variant"] == "int8 (QAT)" and a["passed"]]
    if rescued:
        lines += ["", "Post-training int8 misses are rescued by quantization-aware training: the `QAT int8` "
                  f"file{'s' if len(rescued) > 1 else ''} of {', '.join(rescued)} (the decoded model fine-tuned with "
                  "int8 simulated, its zeros held, exported on its trained ranges) pass QAT's thresholds (99.5% "
                  "top-1 agreement with the QAT model, at most 0.3 point lost): those are the int8 files to ship."]
    lines += ["", "Epochs (train + structured steps x fine-tuning epochs each): "
              + "; ".join(f"{r['model']} {r['epochs']} + {r['structured_steps']} x {r['structured_epochs']}" for r in done),
              "", "Training accuracy at the end of each structured step's fine-tuning (keep ratio of the original "
              "channels after the step): "
              + "; ".join(f"{r['model']} " + " -> ".join(_train_acc(h) for h in r.get("history", []))
                          for r in done),
              "", "Data: " + "; ".join(f"{r['model']}: {r.get('source', r.get('error'))}" for r in rows),
              "", "Seconds per model: " + "; ".join(f"{r['model']} {r['seconds']}" for r in done)
              + f"; total {meta.get('seconds', 0):.0f} s (this run).", ""]
    return "\n".join(lines)
