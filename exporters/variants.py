"""Export variants as values: a name such as ``int8-floatio-sparse`` is parsed once, here.

A variant name is ``<precision>[-sparse]``: the precision (``fp32``, ``fp16``, ``dynamic``,
``int8``, ``int8-floatio``, ``int16x8``) and whether pruned weights are stored sparse. A name
means the same precision in every format. :class:`Variant` holds one format's variant;
every exporter module, the parity check and the command line take it instead of re-reading
the name.

    >>> v = Variant.parse("tflite", "int8-floatio-sparse")
    >>> v.precision, v.sparse, v.calibrated, v.name, v.filename("m")
    ('int8-floatio', True, True, 'int8-floatio-sparse', 'm_int8-floatio-sparse.tflite')
    >>> variants, skipped = parse_variants("tflite,onnx", "fp32,fp16")
    >>> [v.spec for v in variants], skipped[0]["reason"]
    (['tflite:fp32', 'tflite:fp16', 'onnx:fp32'], 'onnx has no fp16 variant')

Which names a format offers is what its exporter registers (:func:`exporters.base.register`
fills :data:`VARIANTS` and :data:`SUFFIXES`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from edgecomp.errors import EdgecompError

#: Variant names each registered format offers, e.g. ``{"tflite": ("fp32", "int8", ...)}``.
VARIANTS: dict[str, tuple[str, ...]] = {}

#: File suffix of each registered format (``{"tflite": ".tflite", "onnx": ".onnx"}``).
SUFFIXES: dict[str, str] = {}

SPARSE_SUFFIX = "-sparse"

#: Precisions whose activations are quantized from calibration data.
CALIBRATED_PRECISIONS = ("int8", "int16x8")


def split_name(name: str) -> tuple[str, bool]:
    """``(precision, sparse)`` of a variant name, whatever the format: ``"int8-sparse"`` -> ``("int8", True)``."""
    name = str(name)
    return name.removesuffix(SPARSE_SUFFIX), name.endswith(SPARSE_SUFFIX)


def _known_format(fmt: str) -> str:
    if fmt not in VARIANTS:
        raise EdgecompError(f"unknown export format '{fmt}'", fix=f"use one of: {', '.join(sorted(VARIANTS))}")
    return fmt


@dataclass(frozen=True)
class Variant:
    """One format's export variant: ``format``, ``precision``, ``sparse``; ``calibrated`` follows.

    ``calibrated``: the variant quantizes activations from calibration data (``int8*``,
    ``int16x8``). ``str(v)`` is the name, so messages read as before.
    """

    format: str
    precision: str
    sparse: bool = False
    calibrated: bool = field(init=False)

    def __post_init__(self):
        if not self.precision or self.precision.endswith(SPARSE_SUFFIX):
            raise EdgecompError(f"'{self.precision}' is not a precision",
                                fix="name the precision alone (fp32, int8, ...) and pass sparse=True")
        object.__setattr__(self, "calibrated", self.precision.startswith(CALIBRATED_PRECISIONS))

    @classmethod
    def parse(cls, fmt: str, name: "str | Variant") -> "Variant":
        """The variant ``name`` of format ``fmt``; a one-line EdgecompError if either is unknown."""
        if isinstance(name, Variant):
            if name.format != fmt:
                raise EdgecompError(f"variant {name.spec} is not a {fmt} variant",
                                    fix=f"pass a {fmt} variant, or its name")
            return name
        offered = VARIANTS[_known_format(fmt)]
        if name not in offered:
            raise EdgecompError(f"format '{fmt}' has no variant '{name}'", fix=f"use one of: {', '.join(offered)}")
        precision, sparse = split_name(name)
        return cls(fmt, precision, sparse)

    @classmethod
    def from_spec(cls, spec: str) -> "Variant":
        """``"tflite:int8"`` -> the tflite int8 variant (the form ``edgecomp run`` lists them in)."""
        fmt, sep, name = str(spec).partition(":")
        if not sep:
            raise EdgecompError(f"'{spec}' is not FORMAT:VARIANT", fix="write e.g. tflite:int8 or onnx:fp32")
        return cls.parse(fmt.strip(), name.strip())

    @property
    def name(self) -> str:
        """The variant's name, e.g. ``int8-floatio-sparse``."""
        return self.precision + (SPARSE_SUFFIX if self.sparse else "")

    @property
    def spec(self) -> str:
        """``format:name``, e.g. ``tflite:int8``."""
        return f"{self.format}:{self.name}"

    @property
    def suffix(self) -> str:
        """The file suffix of the format (``.tflite``, ``.onnx``)."""
        return SUFFIXES.get(self.format, "." + self.format)

    def filename(self, stem: str) -> str:
        """``{stem}_{name}{suffix}``, the file name every export writer uses."""
        return f"{stem}_{self.name}{self.suffix}"

    def __str__(self) -> str:
        return self.name


def variant_of_file(path: "str | os.PathLike") -> "Variant | None":
    """The variant an exported file's name says (the inverse of :meth:`Variant.filename`), or None.

    Example:
        >>> variant_of_file("out/model_int8-sparse.tflite").name
        'int8-sparse'
    """
    path = Path(path)
    fmt = next((f for f, suffix in SUFFIXES.items() if suffix == path.suffix.lower()), None)
    name = path.stem.rsplit("_", 1)[-1]
    if fmt is None or name not in VARIANTS.get(fmt, ()):
        return None
    return Variant.parse(fmt, name)


def _names(items: "str | Iterable[str]") -> list[str]:
    parts = items.split(",") if isinstance(items, str) else items
    return [str(p).strip() for p in parts if str(p).strip()]


def parse_variants(formats: "str | Iterable[str]",
                   names: "str | Iterable[str]") -> tuple[list[Variant], list[dict]]:
    """Each name applied to each format that offers it: ``(variants, skipped)``.

    ``formats`` and ``names`` are lists or comma-separated strings (the CLI's ``--format`` and
    ``--variants``). ``skipped`` has one ``{"format", "variant", "reason"}`` per combination a
    format lacks. An unknown format, or a name no given format offers, is a one-line EdgecompError.
    """
    fmts, wanted = _names(formats), _names(names)
    for fmt in fmts:
        _known_format(fmt)
    unknown = [n for n in wanted if not any(n in VARIANTS[f] for f in fmts)]
    if unknown:
        raise EdgecompError(f"no format in '{','.join(fmts)}' has variant(s) {', '.join(unknown)}",
                            fix="; ".join(f"{f}: {', '.join(VARIANTS[f])}" for f in fmts))
    variants, skipped = [], []
    for fmt in fmts:
        for name in wanted:
            if name in VARIANTS[fmt]:
                variants.append(Variant.parse(fmt, name))
            else:
                skipped.append({"format": fmt, "variant": name, "reason": f"{fmt} has no {name} variant"})
    return variants, skipped
