"""Write benchmark records as JSON, CSV, a Markdown table and PNG plots.

Every file is written atomically (``edgecomp.io``), so an interrupted report
never leaves a half-written file under its final name. Plots use matplotlib's
Agg canvas directly (no global backend switch, no display needed).

    >>> paths = write_report(bench_files(files, x, y), "runs/bench")
    >>> sorted(paths)
    ['accuracy_png', 'csv', 'json', 'latency_png', 'md']
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from edgecomp.io import ensure_dir, write_bytes, write_text
from runtime_bench.bench import RECORD_KEYS

_VERSIONED = ("numpy", "tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert", "onnxruntime")


def write_report(records: Sequence[dict], out_dir: str | os.PathLike, *,
                 size_key: str = "bytes") -> dict[str, Path]:
    """Write ``bench.json``, ``bench.csv``, ``bench.md``, ``latency.png`` and ``accuracy_vs_size.png``.

    ``records`` come from :func:`~runtime_bench.bench_files` (one per artifact x
    target x threads). ``size_key`` (``bytes`` or ``gzip_bytes``) is the size used for the
    accuracy-vs-size plot and the Pareto front (smaller size, higher accuracy).
    Returns the written paths keyed ``json``, ``csv``, ``md``, ``latency_png``,
    ``accuracy_png``.

    Example:
        >>> out = write_report(records, "runs/bench")
        >>> out["md"].read_text().splitlines()[0]          # doctest: +SKIP
        '| artifact | format | threads | ...'
    """
    if size_key not in ("bytes", "gzip_bytes"):
        raise ValueError(f"size_key must be 'bytes' or 'gzip_bytes', got {size_key!r}")
    out = ensure_dir(out_dir)
    records = [dict(r) for r in records]
    front = _pareto_files(records, size_key)
    paths = {
        "json": out / "bench.json",
        "csv": out / "bench.csv",
        "md": out / "bench.md",
        "latency_png": out / "latency.png",
        "accuracy_png": out / "accuracy_vs_size.png",
    }
    doc = {"environment": _environment(), "size_key": size_key,
           "pareto": sorted(front), "records": records}
    write_text(paths["json"], json.dumps(doc, indent=2, default=_plain) + "\n")
    write_text(paths["csv"], _csv_text(records))
    write_text(paths["md"], _markdown(records, front))
    write_bytes(paths["latency_png"], _latency_png(records))
    write_bytes(paths["accuracy_png"], _accuracy_png(records, front, size_key))
    return paths


def pareto_front(sizes: Sequence[float], accuracies: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats: none is at most as big and at least as accurate
    with one of the two strictly better. Exact duplicates keep only the first.

    Example:
        >>> pareto_front([1, 2, 3, 4], [0.5, 0.9, 0.8, 0.95])
        [0, 1, 3]
    """
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], -accuracies[i], i))
    best = -np.inf
    keep = []
    for i in order:
        if accuracies[i] > best:
            keep.append(i)
            best = accuracies[i]
    return sorted(keep)


# -- helpers --------------------------------------------------------------------

def _ok(r: dict) -> bool:
    return not r.get("error")


def _scored(records: list[dict], size_key: str) -> list[dict]:
    """One record per file that has an accuracy and a size (the first such record)."""
    seen: dict[str, dict] = {}
    for r in records:
        if _ok(r) and r.get("accuracy") is not None and r.get(size_key) is not None:
            seen.setdefault(r["file"], r)
    return list(seen.values())


def _pareto_files(records: list[dict], size_key: str) -> set[str]:
    pts = _scored(records, size_key)
    idx = pareto_front([p[size_key] for p in pts], [p["accuracy"] for p in pts])
    return {pts[i]["file"] for i in idx}


def _environment() -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "machine": platform.machine(), "cpu_count": os.cpu_count()}
    for name in _VERSIONED:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return env


def _plain(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, os.PathLike)):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _columns(records: list[dict]) -> list[str]:
    cols = list(RECORD_KEYS)
    for r in records:
        cols += [k for k in r if k not in cols]
    return cols


def _csv_text(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(records), lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()


def _fmt(value, digits: int) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}"


def _sig(value) -> str:
    """Four significant digits: latencies span microseconds to seconds."""
    return "" if value is None else f"{value:.4g}"


#: Columns shown only when some record has a value for them: (header, key, digits).
_OPTIONAL_MD = (("mean IoU", "mean_iou", 4), ("top-1 agree", "top1_agreement", 4),
                ("max abs diff", "max_abs_diff", None))


def _markdown(records: list[dict], front: set[str]) -> str:
    extra = [c for c in _OPTIONAL_MD if any(r.get(c[1]) is not None for r in records)]
    head = ["artifact", "format", "target", "threads", "cpus", "batch", "size KB", "gzip KB",
            "init ms", "first ms", "median ms", "p90 ms", "p99 ms", "runs", "peak RSS MB",
            "accuracy", *[c[0] for c in extra], "pareto", "error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in records:
        kb = lambda k: None if r.get(k) is None else r[k] / 1024  # noqa: E731
        cpus = r.get("cpus")
        cells = [
            r.get("name") or Path(str(r.get("file"))).name, r.get("format") or "",
            r.get("target") or "", str(r.get("threads", "")),
            ",".join(map(str, cpus)) if cpus else "", str(r.get("batch", "")), _fmt(kb("bytes"), 1),
            _fmt(kb("gzip_bytes"), 1), _sig(r.get("init_ms")), _sig(r.get("first_ms")),
            _sig(r.get("median_ms")), _sig(r.get("p90_ms")), _sig(r.get("p99_ms")),
            "" if r.get("runs") is None else str(r["runs"]), _fmt(r.get("peak_rss_mb"), 1),
            _fmt(r.get("accuracy"), 4),
            *[_sig(r.get(key)) if digits is None else _fmt(r.get(key), digits)
              for _, key, digits in extra],
            "yes" if _ok(r) and r.get("file") in front else "",
            r.get("error") or "",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _latency_png(records: list[dict]) -> bytes:
    rows = [r for r in records if _ok(r) and r.get("median_ms") is not None]
    failed = sum(1 for r in records if not _ok(r))
    fig = _figure(8, max(2.5, 0.45 * len(rows) + 1.5))
    ax = fig.add_subplot()
    if rows:
        y = np.arange(len(rows))
        med = np.array([r["median_ms"] for r in rows])
        low = med - np.array([r["min_ms"] if r.get("min_ms") is not None else r["median_ms"] for r in rows])
        # Whiskers: min to p90 (p95 where the tool printed no p90, e.g. benchmark_model).
        upper = [r["p90_ms"] if r.get("p90_ms") is not None else (r.get("p95_ms") or r["median_ms"])
                 for r in rows]
        high = np.array(upper) - med
        ax.barh(y, med, xerr=[low, high], color="tab:blue", alpha=0.8, capsize=3,
                label="median (whiskers: min to p90)")
        # A phone's benchmark_model prints no p99: those rows show no marker.
        p99 = [np.nan if r.get("p99_ms") is None else r["p99_ms"] for r in rows]
        ax.plot(p99, y, "x", color="tab:red", label="p99")
        ax.set_yticks(y, [f"{r['name']} ({r['target'] + ', ' if r.get('target') else ''}"
                          f"{r['threads']}t, b{r['batch']})" for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("latency per invoke (ms)")
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no successful measurements", ha="center", va="center")
        ax.set_axis_off()
    title = "Latency per artifact"
    if failed:
        title += f" ({failed} failed, not shown)"
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig)


def _accuracy_png(records: list[dict], front: set[str], size_key: str) -> bytes:
    pts = _scored(records, size_key)
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    if pts:
        kb = np.array([p[size_key] / 1024 for p in pts])
        acc = np.array([p["accuracy"] for p in pts])
        on = np.array([p["file"] in front for p in pts])
        ax.scatter(kb[~on], acc[~on], color="tab:gray", label="dominated")
        ax.scatter(kb[on], acc[on], color="tab:red", zorder=3, label="Pareto front")
        order = np.argsort(kb[on])
        ax.step(kb[on][order], acc[on][order], where="post", color="tab:red", alpha=0.6)
        for k, a, p in zip(kb, acc, pts):
            ax.annotate(p["name"], (k, a), fontsize="x-small", xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        if kb.max() < 10 * kb.min():  # under a decade: label the minor ticks too
            ax.xaxis.set_minor_formatter(plain)
            ax.tick_params(axis="x", which="minor", labelsize="x-small")
        ax.set_xlabel(f"size ({'gzip ' if size_key == 'gzip_bytes' else ''}KB, log scale)")
        ax.set_ylabel("accuracy")
        ax.legend(loc="lower right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no accuracy measured (no labels given)", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("Accuracy vs size")
    fig.tight_layout()
    return _png(fig)
