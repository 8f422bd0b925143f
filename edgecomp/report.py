"""The main job's report: one printed table, ``report.json``, ``report.md`` and a
size-vs-accuracy PNG, all written atomically."""

from __future__ import annotations

import io as _io
from pathlib import Path

from edgecomp import io


def _pct(v):
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v, fmt="{:,}"):
    return "-" if v is None else fmt.format(v)


def bench_by_path(report: dict) -> dict:
    """The run's bench records by resolved file path (an artifact's ``path`` looks its record up here)."""
    return {str(Path(r["file"]).resolve()): r for r in report["bench"]}


def model_rows(report: dict) -> list[list[str]]:
    return [[m["name"], _num(m["params"]), _num(m.get("macs")), _num(m["nonzeros"]), _pct(m["accuracy"]),
             _num(m["storage_bytes"]), f"{m['ratio']:.1f}x"] for m in report["models"]]


def artifact_rows(report: dict) -> list[list[str]]:
    bench = bench_by_path(report)
    base = next((bench.get(str(Path(a["path"]).resolve()), {}) for a in report["artifacts"]
                 if a.get("model") == "baseline"), {})
    rows = []
    for a in report["artifacts"]:
        r = bench.get(str(Path(a["path"]).resolve()), {})
        parity = a.get("parity") or {}
        speedup = base["median_ms"] / r["median_ms"] if base.get("median_ms") and r.get("median_ms") else None
        rows.append([Path(a["path"]).name, a.get("model", ""), a["format"], a["variant"], _num(a["bytes"]),
                     _num(a["gzip_bytes"]), _pct(r.get("accuracy")), _pct(parity.get("top1_agreement")),
                     _num(parity.get("max_abs_diff"), "{:.1e}"),
                     _num(r.get("median_ms"), "{:.3f}"), _num(r.get("p90_ms"), "{:.3f}"),
                     _num(speedup, "{:.1f}x"), a.get("error") or r.get("error") or ""])
    return rows


MODEL_HEAD = ["model", "params", "MACs", "nonzeros", "accuracy", "storage bytes", "ratio"]
ARTIFACT_HEAD = ["artifact", "model", "format", "variant", "file bytes", "gzip bytes", "accuracy", "top-1 agree",
                 "max abs diff", "median ms", "p90 ms", "speedup", "error"]


def headline_text(report: dict) -> str:
    h = report.get("headline") or {}
    if not h:
        return ""
    parts = [f"container {h['container_ratio']:.1f}x smaller than the fp32 weights"]
    if "int8_tflite_ratio" in h:
        parts.append(f"int8 TFLite {h['int8_tflite_ratio']:.1f}x smaller than the baseline's fp32 TFLite")
    if "speedup" in h:
        parts.append(f"fastest export ({h['fastest']}) {h['speedup']:.1f}x faster than the baseline's fp32 TFLite")
    return f"edgecomp: {', '.join(parts)}; accuracy {h['accuracy_change_points']:+.2f} points."


def text_table(head, rows) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(head, rows, align: str | None = None) -> str:
    """A Markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default: all plain)."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in (align or "l" * len(head)))
    out = ["| " + " | ".join(head) + " |", rule]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def summary_text(report: dict) -> str:
    threads = report["config"].get("threads", 1)
    return (text_table(MODEL_HEAD, model_rows(report)) + "\n\n"
            + text_table(ARTIFACT_HEAD, artifact_rows(report))
            + f"\n\nlatency: batch 1, {threads} thread(s); accuracy on {report['data']['test']} test images"
              f" of {report['data']['name']} ({report['data']['source']})\n" + headline_text(report))


def markdown(report: dict) -> str:
    sc = report.get("storage_check")
    seed_line = "" if sc is None else (
        f"Seed's method: container {sc['container_bytes']:,} B against {sc['seed_format_bytes']:,} B for the seed's "
        f"own format ({100 * sc['relative_difference']:+.2f}%); decoded weights: worst error "
        f"{sc['max_error_in_steps']:.3f} int8 steps; pruned weights exactly zero: {sc['pruned_exact_zero']}.")
    return "\n".join([
        f"# edgecomp run: {report['config']['model']} on {report['data']['name']}", "",
        f"Made by `{report['config'].get('command', 'edgecomp run')}` in {report['seconds']:.0f} s.", "",
        f"Data: {report['data']['train']} train / {report['data']['test']} test samples from "
        f"`{report['data']['source']}`. Latency: batch 1, {report['config'].get('threads', 1)} thread(s), "
        f"median and p90 after warm-up, each artifact in a fresh process. Machine: {report.get('machine', 'not recorded')}.", "",
        markdown_table(MODEL_HEAD, model_rows(report)), "",
        markdown_table(ARTIFACT_HEAD, artifact_rows(report)), "",
        f"**{headline_text(report)}**" if report.get("headline") else "", "",
        seed_line, "",
    ])


def png_bytes(fig, dpi: int | None = None) -> bytes:
    """Render a matplotlib figure to PNG bytes (tight layout) and close it."""
    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def size_plot_png(fig, ax, *, ylabel: str, title: str, xlabel: str = "size (KiB, log scale)",
                  legend: bool = True) -> bytes:
    """Finish an accuracy-vs-size plot (log size axis, labels, grid, legend) as PNG bytes.

    Example:
        >>> fig, ax = plt.subplots(); ax.plot(kib, acc, "o-", label="seed")
        >>> png = size_plot_png(fig, ax, ylabel="test accuracy (%)", title="VGG-like")
    """
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return png_bytes(fig, dpi=110)


def plot_size_accuracy(report: dict) -> bytes:
    """Accuracy against size (containers and files) and against measured latency (files).

    Every point is named in a legend beside the axes, not by a label on the plot, so no two
    names can overlap however close the points are.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, lat) = plt.subplots(1, 2, figsize=(13, 6.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bench = bench_by_path(report)
    markers = iter("sDP^v<>ohX*p")
    for i, m in enumerate(report["models"]):
        ax.scatter(m["storage_bytes"] / 1024, 100 * m["accuracy"], marker="s", s=70, color=colors[i % len(colors)],
                   label=f"{m['name'][:90]} ({'fp32 weights' if m.get('key') == 'baseline' else 'container'})")
    for i, a in enumerate(report["artifacts"]):
        r = bench.get(str(Path(a["path"]).resolve()), {})
        if r.get("accuracy") is None or a.get("error"):
            continue
        style = dict(marker=next(markers, "o"), s=45, color=colors[(i + len(report["models"])) % len(colors)])
        name = Path(a["path"]).name
        ax.scatter(a["bytes"] / 1024, 100 * r["accuracy"], label=name, **style)
        if r.get("median_ms"):
            lat.scatter(r["median_ms"], 100 * r["accuracy"], label=name, **style)
    lat.set_xscale("log")
    lat.set_xlabel("median latency, batch 1 (ms, log scale)")
    lat.set_ylabel("test accuracy (%)")
    lat.set_title("accuracy vs measured latency")
    lat.grid(True, which="both", alpha=0.3)
    lat.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
    return size_plot_png(fig, ax, ylabel="test accuracy (%)", legend=False,
                         title=f"{report['config']['model']} on {report['data']['name']}: size vs accuracy")


def write_run_report(report: dict, out: Path):
    """Print the table and write report.json, report.md and size_vs_accuracy.png into ``out``."""
    out = Path(out)
    io.write_json(out / "report.json", report)
    io.write_text(out / "report.md", markdown(report))
    io.write_bytes(out / "size_vs_accuracy.png", plot_size_accuracy(report))
    print("\n" + summary_text(report) + f"\n\nwrote {out}/report.json, report.md, size_vs_accuracy.png", flush=True)
