"""The report of ``scripts/bench_applications.py``: the counts, the Markdown table and the PNG."""

from __future__ import annotations

from pathlib import Path

CELLS = (("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32"), ("onnx", "int8"))


def _artifact(row: dict, fmt: str, variant: str, route: str | None = None) -> dict | None:
    """The ``fmt`` ``variant`` file of the row (post-training quantized), or of the QAT route (``route="qat"``)."""
    return next((a for a in row.get("artifacts", [])
                 if a["format"] == fmt and a["variant"] == variant and a.get("route") == route), None)


def _passed(row: dict, variant: str, route: str | None = None) -> bool:
    arts = [_artifact(row, fmt, variant, route) for fmt in ("tflite", "onnx")]
    return all(a is not None and a["passed"] for a in arts)


def _int8_either(row: dict) -> bool:
    """int8 in parity in both formats, post-training or (where that missed) by the QAT route."""
    return _passed(row, "int8") or _passed(row, "int8", "qat")


#: A miss is put down to near ties only when the file's worst error is this small as well (int8
#: softmax outputs step by 1/256): with a larger error every flip is "within twice the error" of
#: :func:`exporters.parity.near_ties`, and the int8 arithmetic itself is what moved the scores.
NEAR_TIE_MAX_DIFF = 0.05


def near_tie_only(a: dict | None) -> bool:
    """An int8 file out of parity only by top-1 flips that were all near ties of the Keras scores:
    closer than one step of the file's quantized output where the row has that count, else closer
    than twice the file's error with that error small."""
    p = (a or {}).get("parity") or {}
    fails = p.get("failures") or []
    if not p.get("flipped") or not all("top1_agreement" in f or "accuracy_delta" in f for f in fails):
        return False
    if "flipped_within_step" in p:
        return p["flipped_within_step"] == p["flipped"]
    return p.get("flipped_near_ties") == p.get("flipped") and p.get("max_abs_diff", 1.0) <= NEAR_TIE_MAX_DIFF


def counts(rows: list[dict]) -> dict:
    """``{"fp32": [N, M], "int8": [N, M], "int8_trained": [N, M], "int8_near_ties": [...], ...}``."""
    m = len(rows)
    trained = [r for r in rows if r.get("trained_steps")]
    int8_miss = [r for r in rows if not _passed(r, "int8")]
    near = [r["family"] for r in int8_miss
            if all(near_tie_only(_artifact(r, f, "int8")) or (_artifact(r, f, "int8") or {}).get("passed")
                   for f in ("tflite", "onnx"))]
    return {"fp32": [sum(_passed(r, "fp32") for r in rows), m],
            "fp32_via_container": [sum(_passed(r, "fp32") and r.get("exported_from", "decoded").startswith("decoded")
                                       for r in rows), m],
            "int8": [sum(_passed(r, "int8") for r in rows), m],
            "int8_trained": [sum(_passed(r, "int8") for r in trained), len(trained)],
            "int8_trained_with_qat": [sum(_int8_either(r) for r in trained), len(trained)],
            "int8_by_qat": [r["family"] for r in rows if not _passed(r, "int8") and _passed(r, "int8", "qat")],
            "int8_near_ties": near,
            "int8_other_failures": [r["family"] for r in int8_miss if r["family"] not in near],
            "fp32_failures": [r["family"] for r in rows if not _passed(r, "fp32")],
            "decoded": [sum(bool(r.get(k, {}).get("decoded")) for r in rows for k in ("seed", "deep")), 2 * m]}


def _cell(a: dict | None) -> str:
    if a is None:
        return "-"
    p = a.get("parity") or {}
    top1 = p.get("top1_agreement")
    agree = "" if top1 is None else f"{100 * top1:.1f}%"
    if a["passed"]:
        ms = a.get("median_ms")
        return f"ok {agree}, {'-' if ms is None else f'{ms:.2f} ms'}"
    if p.get("flipped"):
        if "flipped_within_step" in p:
            return (f"**miss** {agree}, max diff {p.get('max_abs_diff', 0):.2g} ({p['flipped']} flips: "
                    f"{p['flipped_within_step']} within one output step, {p['flipped_near_ties']} within twice the error)")
        return (f"**miss** {agree}, max diff {p.get('max_abs_diff', 0):.2g} "
                f"({p['flipped_near_ties']}/{p['flipped']} flips near ties)")
    if p:
        return f"**miss** {agree}, max diff {p.get('max_abs_diff', 0):.2g}"
    return f"**error**: {a.get('error', '')[:90]}"


def _wide(row: dict, fmt: str, variant: str) -> str:
    """The int16x8 and QAT int8 files tried where int8 missed, as notes in the int8 cell."""
    if variant != "int8":
        return ""
    wide, qat = _artifact(row, fmt, "int16x8"), _artifact(row, fmt, "int8", "qat")
    return ("" if wide is None else f"; int16x8: {_cell(wide)}") + ("" if qat is None else f"; QAT int8: {_cell(qat)}")


def _ratio(entry: dict | None) -> str:
    if not entry:
        return "-"
    if not entry.get("decoded"):
        return f"{entry.get('ratio', '-')}x, **not decoded**"
    return f"{entry['ratio']}x"


def markdown(rows: list[dict], meta: dict) -> str:
    s, c = meta["settings"], counts(rows)
    v = meta.get("versions", {})
    lines = [
        "# keras.applications coverage",
        "",
        f"Made by `{meta['command']}`. Every family in its smallest member at the smallest input it "
        "accepts, `weights=None`, `classes=10`, on `synthetic_patterns` (oriented gratings, 10 classes; "
        f"{s['n_test']} check samples). Families with a step count were trained first"
        + (f" on {s['n_fit']} samples (Adam 2e-3, batch 32, until the first epoch with {100 * s['train_target']:g}% "
           f"accuracy on 256 held-out samples or {s['train_steps']} steps, then {s.get('anneal_epochs', 0)} epoch(s) of "
           "cosine decay to 0; "
           if "n_fit" in s else f" briefly on {s['n_train']} samples (Adam 2e-3, batch 32; ")
        + "BatchNorm momentum set to 0.9 in every family); the others stay at random initialisation, and give "
        f"{s['n_train']} samples to compression and calibration. Both methods prune at rate {s['rate']} (fine-tuning "
        f"{s.get('fine_tune_epochs', 1)} epoch(s) over the training samples"
        + (f" at Adam {s['fine_tune_lr']:g} with cosine decay" if "fine_tune_lr" in s else "")
        + ", and for deep as many centroid epochs, on the "
        "trained families; none on the others); ratio: float32 weights / container bytes. The deep container is decoded "
        "(`store.decode_model`) and its model exported; each file is checked against it (fp32: 100% top-1 "
        "agreement and max abs diff <= 1e-4; int8: >= 99% agreement and <= 0.5 point lost) and benchmarked "
        "(median, batch 1, 1 thread). Cells: parity verdict, top-1 agreement, latency; a miss gives how many "
        "of the flipped answers had the Keras model's top two scores closer than one step of the file's quantized "
        "output (near ties) and how many closer than twice the file's max abs diff; where a trained family's int8 file missed, its int16x8 file (int8 weights, int16 "
        "activations) was checked too, and the family was deep-compressed again with "
        f"{s.get('qat_epochs', 0)} epoch(s) of quantization-aware training (`qat_epochs`), its int8 files made from "
        "that container's trained ranges (\"QAT int8\"; QAT files need >= 99.5% agreement).",
        "",
        f"Versions: TF {v.get('tensorflow-cpu', '?')}, Keras {v.get('keras', '?')}, tf2onnx {v.get('tf2onnx', '?')}, "
        f"onnx {v.get('onnx', '?')}, ONNX Runtime {v.get('onnxruntime', '?')}, LiteRT {v.get('ai-edge-litert', '?')}. "
        f"{meta['machine']}, shared with other jobs during the run (load average {meta.get('load_before')} -> "
        f"{meta.get('load_after')}): latencies are indicative only. {meta.get('seconds', 0) / 60:.0f} min in all"
        + (f"; the rows of {', '.join(r['family'] for r in rows if r.get('reused'))} were made by an earlier run with "
           "the same settings and taken from it (`--reuse`)." if any(r.get("reused") for r in rows) else "."),
        "",
        "| family | input | params | MACs | trained | seed ratio | deep ratio (B) | deep acc | "
        "TFLite fp32 | TFLite int8 | ONNX fp32 | ONNX int8 |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|---|---|---|",
    ]
    for r in rows:
        name = f"{r['family']}" + (f" ({', '.join(f'{k} {v}' for k, v in r['options'].items())})" if r.get("options") else "")
        if r.get("exported_from", "decoded").startswith("in-memory"):
            name += " ‡"
        if "params" not in r:
            lines.append(f"| {name} | {r.get('input')} | - | - | - | - | - | - | **{r.get('error')}** | | | |")
            continue
        trained = (f"{r['trained_steps']} steps, acc {100 * r['accuracy']:.0f}%" if r.get("trained_steps")
                   else f"no (acc {100 * r['accuracy']:.0f}%)")
        deep = r.get("deep", {})
        acc = f"{100 * deep['accuracy']:.0f}%" if deep.get("accuracy") is not None else "-"
        cells = " | ".join(_cell(_artifact(r, f, v)) + _wide(r, f, v) for f, v in CELLS)
        lines.append(f"| {name} | {r['input']} | {r['params']:,} | {r['macs']:,} | {trained} | {_ratio(r.get('seed'))} | "
                     f"{_ratio(deep)} ({deep.get('container_bytes', 0):,}) | {acc} | {cells} |")
    f32, i8, i8t, m = c["fp32"], c["int8"], c["int8_trained"], len(rows)
    lines += [
        "",
        f"- fp32 TFLite and ONNX both in parity: **{f32[0]} of {f32[1]} families**"
        + (f" (not: {', '.join(c['fp32_failures'])})" if c["fp32_failures"] else "")
        + f"; exported from the decoded container: **{c['fp32_via_container'][0]} of {m} families**"
        + "".join(f"; {r['family']} from the {r['exported_from']}" for r in rows
                  if not r.get("exported_from", "decoded").startswith("decoded")) + ".",
        f"- int8 TFLite and ONNX both in parity: **{i8[0]} of {i8[1]} families**; of the trained ones "
        f"**{i8t[0]} of {i8t[1]}**; with QAT where post-training int8 missed: **{c['int8_trained_with_qat'][0]} of "
        f"{c['int8_trained_with_qat'][1]}**" + (f" ({', '.join(c['int8_by_qat'])} by QAT)" if c["int8_by_qat"] else "")
        + ".",
        f"- int8 misses where every flipped answer was a near tie (the Keras model's top two scores closer than one "
        f"step of the file's quantized output): {', '.join(c['int8_near_ties']) or 'none'}; other int8 misses (the int8 error "
        f"itself is large, or no file): {', '.join(c['int8_other_failures']) or 'none'}.",
        "- int16x8 (tried where a trained family's int8 missed) in parity: " + (", ".join(
            f"{r['family']} {a['format']}" for r in rows for a in r.get("artifacts", [])
            if a["variant"] == "int16x8" and a["passed"]) or "none") + ".",
        "- QAT route containers (deep compression again, with QAT): " + ("; ".join(
            f"{r['family']} {r['deep_qat']['ratio']}x ({r['deep_qat']['container_bytes']:,} B), decoded QAT model's "
            f"accuracy {100 * r['deep_qat']['accuracy']:.1f}%" for r in rows if r.get("deep_qat")) or "none") + ".",
        f"- Containers decoded: {c['decoded'][0]} of {c['decoded'][1]} (seed and deep).",
        "- ONNX: families with a Keras `Normalization` layer ("
        + (", ".join(r["family"] for r in rows if r.get("normalization_layers")) or "none here")
        + ") converted, before the fix, to files ONNX Runtime refused (\"Required inputs ([...normalization_1/Sub/y:0, "
        "...Sqrt/x:0]) are missing from input feed\"): tf2onnx 1.17 (with TF 2.21 and Keras 3.15, on our route "
        "and on Keras's own `model.export(format=\"onnx\")`, which calls the same `tf2onnx.convert.from_function`) "
        "leaves tensors the traced call captures by value as graph inputs. `exporters/onnx_captures.py` makes them "
        "initializers (or drops them where no node reads them); the parity check covers the result.",
        "",
    ]
    errors = [(r["family"], r["error"]) for r in rows if r.get("error")]
    errors += [(r["family"], f"{a['format']} {a['variant']}: {a['error']}") for r in rows
               for a in r.get("artifacts", []) if a.get("error") and not a.get("parity")]
    if errors:
        lines += ["Errors:", ""] + [f"- {f}: {e}" for f, e in errors] + [""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Two panels: deep and seed container ratio per family; median latency of each passing file."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in rows if "params" in r]
    if not rows:
        return
    names = [r["family"] for r in rows]
    xs = np.arange(len(rows))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.8 * len(rows)), 7), sharex=True)
    for k, (method, off) in enumerate((("seed", -0.2), ("deep", 0.2))):
        ax1.bar(xs + off, [r.get(method, {}).get("ratio", 0) for r in rows], 0.4, label=f"{method} container")
    ax1.set_ylabel("float32 weights / container")
    ax1.legend()
    for k, (fmt, variant) in enumerate(CELLS):
        ms = [(_artifact(r, fmt, variant) or {}).get("median_ms") or np.nan for r in rows]
        ax2.bar(xs + (k - 1.5) * 0.2, ms, 0.2, label=f"{fmt} {variant}")
    ax2.set_yscale("log")
    ax2.set_ylabel("median ms (batch 1, 1 thread)")
    ax2.legend(fontsize=8)
    ax2.set_xticks(xs, names, rotation=40, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
