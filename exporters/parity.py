"""Parity: does an exported file compute what the Keras model computes?

:func:`check_parity` runs the Keras model and the file (in its real runtime,
through :func:`runtime_bench.runners.open_runner`) on the same float inputs and
compares them. :func:`export_and_check` exports to a temporary file, checks it,
and only then renames it to its final name; a file that fails is deleted and a
:class:`ParityError` says which figure missed which threshold.

    >>> from exporters import export_and_check
    >>> art = export_and_check(model, "tflite", "fp32", "out/m.tflite",
    ...                        check_x=x_test[:500], check_y=y_test[:500])
    >>> art.parity["max_abs_diff"] <= 1e-4
    True

Accuracies and ``accuracy_delta`` (artifact minus Keras) are fractions:
``accuracy_delta >= -0.005`` means "at most half a point lost".
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from edgecomp import io
from edgecomp.errors import EdgecompError
from edgecomp.metrics import parity_figures, predicted_classes
from edgecomp.train import predict

from .base import Artifact, export, get_exporter, model_for
from .variants import Variant, split_name

#: Figures that must stay at or below their threshold; every other figure must stay at or above.
UPPER_BOUNDED = frozenset({"max_abs_diff", "mean_abs_diff"})
FIGURES = ("max_abs_diff", "mean_abs_diff", "top1_agreement",
           "accuracy_keras", "accuracy_artifact", "accuracy_delta")

#: Default thresholds per precision (a variant name means the same precision in every
#: format; a ``-sparse`` variant stores the same weights, so it gets its dense variant's
#: limits). Override per call with ``thresholds={figure: limit}`` (``None`` drops a
#: check), or change this dict for the whole process.
_FP32 = {"max_abs_diff": 1e-4, "top1_agreement": 1.0}
_FP16 = {"max_abs_diff": 1e-2, "top1_agreement": 0.99}
_INT8 = {"top1_agreement": 0.99, "accuracy_delta": -0.005}
#: A QAT model's int8 file against the QAT model, which simulates its int8 arithmetic: tighter.
QAT_THRESHOLDS = {"top1_agreement": 0.995, "accuracy_delta": -0.003}
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    precision: dict(limits)
    for precision, limits in (("fp32", _FP32), ("fp16", _FP16), ("dynamic", _INT8), ("int8", _INT8),
                              ("int8-floatio", _INT8), ("int16x8", _INT8))
}


def default_thresholds(variant: str | Variant | None) -> dict[str, float]:
    """The :data:`DEFAULT_THRESHOLDS` of ``variant``'s precision (``{}`` for None or an unknown name)."""
    if variant is None:
        return {}
    precision = variant.precision if isinstance(variant, Variant) else split_name(variant)[0]
    return dict(DEFAULT_THRESHOLDS.get(precision, {}))


class ParityError(EdgecompError):
    """An exported file that does not match its Keras model closely enough.

    ``figures`` holds the full :func:`check_parity` result.
    """

    def __init__(self, problem: str, figures: dict | None = None, fix: str | None = None):
        super().__init__(problem, fix=fix or "inspect the model, or loosen thresholds= if the loss is acceptable")
        self.figures = figures or {}


def _labels(y, like: np.ndarray, out_shape: tuple) -> np.ndarray:
    y = np.asarray(y)
    if y.shape == out_shape and out_shape[-1] > 1:  # one-hot
        y = np.argmax(y, axis=-1)
    try:
        return y.reshape(like.shape).astype(np.int64)
    except ValueError:
        raise EdgecompError(f"labels have shape {y.shape}, predictions {like.shape}",
                            fix="pass int class indices, one per sample") from None


def _thresholds_for(variant: str | Variant | None, overrides: dict | None, trained: bool = False) -> dict[str, float]:
    merged = dict(QAT_THRESHOLDS) if trained else default_thresholds(variant)
    for key, limit in (overrides or {}).items():
        if key not in FIGURES:
            raise EdgecompError(f"unknown parity figure '{key}'", fix=f"use one of: {', '.join(FIGURES)}")
        if limit is None:
            merged.pop(key, None)
        else:
            merged[key] = float(limit)
    return merged


#: How far a figure may sit past its limit by float rounding alone and still meet it.
_ROUNDING = 1e-12


def judge_figures(figures: dict, thresholds: dict, label: str) -> list[str]:
    """One line per figure in ``figures`` that misses its threshold, prefixed by ``label``.

    Example:
        >>> judge_figures({"top1_agreement": 0.98}, {"top1_agreement": 0.99}, "int8")
        ['int8: top1_agreement 0.98 < 0.99 required']
    """
    return _failures(figures, thresholds, label)


def _failures(figures: dict, thresholds: dict, label: str) -> list[str]:
    out = []
    for key, limit in thresholds.items():
        if key not in figures:  # e.g. accuracy_delta without labels
            continue
        value = figures[key]
        # A limit met exactly passes: 1 sample lost of 200 is an accuracy_delta of -0.005 up to float
        # rounding (-0.0050000000000000044), which the gate's "<= 0.5 points lost" allows.
        if key in UPPER_BOUNDED:
            ok, rel = value <= limit + _ROUNDING, f"> {limit:g} allowed"
        else:
            ok, rel = value >= limit - _ROUNDING, f"< {limit:g} required"
        if not ok:  # NaN fails both ways
            out.append(f"{label}: {key} {value:.6g} {rel}")
    return out


def check_parity(model, artifact_or_path: Artifact | str | os.PathLike, x: np.ndarray, y=None,
                 thresholds: dict | None = None, variant: str | Variant | None = None,
                 **runner_options) -> dict:
    """Compare ``model`` and an exported file on the float inputs ``x``.

    Returns ``{"n", "max_abs_diff", "mean_abs_diff", "top1_agreement"}`` plus,
    when int labels ``y`` are given, ``"accuracy_keras"``, ``"accuracy_artifact"``
    and ``"accuracy_delta"`` (fractions), and the verdict: ``"variant"``,
    ``"thresholds"`` applied, ``"failures"`` (one line each) and ``"passed"``.
    It never raises for a failed check; :func:`export_and_check` does.

    ``variant`` picks :data:`DEFAULT_THRESHOLDS` (default: the artifact's; for a
    bare path without ``variant`` only the given ``thresholds`` apply).
    ``runner_options`` go to ``open_runner`` (e.g. ``resolver="builtin"``).

    Example:
        >>> r = check_parity(model, "m_int8.tflite", x_test[:500], y_test[:500], variant="int8")
        >>> r["passed"], r["top1_agreement"]
        (True, 0.998)
    """
    from runtime_bench.runners import open_runner

    if isinstance(artifact_or_path, Artifact):
        path, variant = artifact_or_path.path, variant or artifact_or_path.variant
        # The runtime setting the exporter found the file loads with.
        for key in ("resolver", "optimization"):
            if artifact_or_path.needs.get(key):
                runner_options.setdefault(key, artifact_or_path.needs[key])
    else:
        path = Path(artifact_or_path)
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        raise EdgecompError("parity check needs at least one input", fix="pass check_x with some test inputs")
    trained = False
    if variant is not None:
        from runtime_bench.runners import format_of
        fmt = artifact_or_path.format if isinstance(artifact_or_path, Artifact) else format_of(path)
        model, trained = model_for(model, Variant.parse(fmt, str(variant)))
    limits = _thresholds_for(variant, thresholds, trained)
    variant = None if variant is None else str(variant)

    ref = predict(model, x)
    got = open_runner(path, threads=1, **runner_options).predict(x)
    label = f"{variant or path.name} parity"
    if got.shape != ref.shape:
        figures = {"variant": variant, "n": int(len(x)), "thresholds": limits, "passed": False,
                   "failures": [f"{label}: output shape {got.shape} != Keras {ref.shape}"]}
        return figures

    # One home for the figures: the bench reports the same ones (edgecomp.metrics).
    pred_ref, pred_got = predicted_classes(ref), predicted_classes(got)
    figures: dict = {"variant": variant, "n": int(len(x)), **parity_figures(got, ref)}
    if y is not None:
        labels = _labels(y, pred_ref, ref.shape)
        figures["accuracy_keras"] = float(np.mean(pred_ref == labels))
        figures["accuracy_artifact"] = float(np.mean(pred_got == labels))
        figures["accuracy_delta"] = figures["accuracy_artifact"] - figures["accuracy_keras"]
    figures["thresholds"] = limits
    figures["failures"] = _failures(figures, limits, label)
    figures["passed"] = not figures["failures"]
    if figures["failures"] and ref.shape[-1] > 1:
        figures.update(near_ties(ref, pred_ref != pred_got, figures["max_abs_diff"],
                                 _file_output_step(path, artifact_or_path, ref, variant)))
        figures["qat"] = trained
    return figures


def output_step(ref: np.ndarray, variant: str | None) -> float | None:
    """The step of a calibrated variant's quantized output over ``ref``'s range (int8: 1/255 of
    it, int16x8: 1/65535), the finest difference its output tensor can hold; None for float
    variants.

    Example:
        >>> round(output_step(np.array([[0.0, 1.0]]), "int8"), 6)
        0.003922
    """
    name = str(variant or "")
    bits = 16 if name.startswith("int16") else 8 if name.startswith("int8") else None
    if bits is None:
        return None
    return float(np.ptp(ref)) / (2 ** bits - 1)


def _file_output_step(path: Path, artifact, ref: np.ndarray, variant) -> float | None:
    """The output step the file itself holds (its readers' ``needs["output_step"]``), else the
    estimate of :func:`output_step` for a calibrated variant."""
    needs = artifact.needs if isinstance(artifact, Artifact) else None
    if needs is None or "output_step" not in needs:
        try:
            from runtime_bench.runners import format_of
            _, needs = get_exporter(format_of(path)).describe(path.read_bytes())
        except Exception:  # noqa: BLE001 - a diagnosis only: fall back to the estimate
            needs = {}
    step = needs.get("output_step")
    return float(step) if step else output_step(ref, variant)


def near_ties(ref: np.ndarray, flipped: np.ndarray, max_abs_diff: float, step: float | None = None) -> dict:
    """Why top-1 answers flip: how many flipped samples (pixels) had the Keras model's top two
    scores closer than twice the file's worst error (near ties that error can reorder), and,
    given the quantized output's ``step`` (:func:`output_step`), closer than one step (ties the
    output's rounding alone can reorder). Flips with wider margins are the arithmetic's error.

    Example:
        >>> near_ties(np.array([[0.50, 0.49, 0.01], [0.9, 0.05, 0.05]]), np.array([True, False]), 0.02, 0.004)
        {'flipped': 1, 'flipped_near_ties': 1, 'near_tie_margin': 0.04, 'output_step': 0.004, \
'flipped_within_step': 0, 'median_flipped_margin': 0.01}
    """
    top2 = np.sort(ref.reshape(-1, ref.shape[-1]), axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    flipped = np.asarray(flipped).reshape(-1)
    bound = 2 * float(max_abs_diff)
    out = {"flipped": int(flipped.sum()), "flipped_near_ties": int((margin[flipped] < bound).sum()),
           "near_tie_margin": round(bound, 6)}
    if step is not None:
        out.update({"output_step": round(step, 6), "flipped_within_step": int((margin[flipped] < step).sum())})
    if flipped.any():
        out["median_flipped_margin"] = round(float(np.median(margin[flipped])), 6)
    return out


def diagnosis(figures: dict) -> str:
    """One clause on why a check failed, from :func:`near_ties`' figures (empty when there are none)."""
    n = figures.get("flipped")
    if not n:
        return ""
    within = figures.get("flipped_within_step", figures.get("flipped_near_ties", 0))   # the ties
    if "output_step" in figures:
        text = (f"; {within} of the {n} flipped answers were near ties (the Keras model's top two scores closer "
                f"than one output step, {figures['output_step']:.3g}), {figures['flipped_near_ties']} closer than "
                f"twice the file's worst error ({figures['near_tie_margin']:.3g})")
        if within < n:
            text += (f"; the other {n - within} were moved by the quantized arithmetic's error "
                     f"(median flipped margin {figures.get('median_flipped_margin', 0):.3g})")
    else:
        text = (f"; {figures['flipped_near_ties']} of the {n} flipped answers had the Keras model's top "
                f"two scores within {figures['near_tie_margin']:.3g} (near ties its error can reorder)")
    if (figures.get("variant") or "").startswith("int8"):
        text += "; the int16x8 variant keeps more precision"
        if within < n and not figures.get("qat"):
            text += ", and quantization-aware training (compress --qat-epochs 1) trains the net for the int8 arithmetic"
    return text


def export_and_check(model, fmt: str, variant: str | Variant, out_path: str | os.PathLike,
                     calibration: np.ndarray | None = None, check_x: np.ndarray | None = None,
                     check_y=None, thresholds: dict | None = None) -> Artifact:
    """Export, check parity on ``check_x``/``check_y``, and only then publish at ``out_path``.

    The file is written to a hidden temporary name beside ``out_path``; if the
    check fails it is deleted, ``out_path`` is left untouched, and a
    :class:`ParityError` is raised whose one-line message names the variant, the
    figure, its value and the threshold. On success ``artifact.parity`` holds the
    :func:`check_parity` result.

    Example:
        >>> art = export_and_check(model, "onnx", "fp32", "out/m.onnx", check_x=x_test[:200])
        >>> art.parity["passed"], art.path.name
        (True, 'm.onnx')
    """
    variant = Variant.parse(fmt, variant)
    exporter = get_exporter(fmt)
    out_path = Path(out_path)
    if out_path.suffix.lower() != exporter.suffix:
        raise EdgecompError(f"{out_path.name}: a {fmt} file must end in {exporter.suffix}",
                            fix=f"name it {out_path.stem}{exporter.suffix}")
    if check_x is None:
        raise EdgecompError("export_and_check needs check_x", fix="pass some test inputs as check_x")
    io.ensure_dir(out_path.parent)
    # The runners pick the runtime by suffix, so the temporary name keeps it.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=f".part{exporter.suffix}",
                                    dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        artifact = export(model, fmt, variant, tmp, calibration=calibration)
        figures = check_parity(model, artifact, check_x, check_y, thresholds=thresholds, variant=variant)
        if not figures["passed"]:
            raise ParityError(f"{fmt} " + "; ".join(figures["failures"]) + f" (n={figures['n']})" + diagnosis(figures),
                              figures)
        os.replace(tmp, out_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    artifact.path = out_path
    artifact.parity = figures
    return artifact
