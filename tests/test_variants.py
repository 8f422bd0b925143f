"""Export variants as values: parsed once (exporters.variants), shared by every exporter and the CLI."""

from __future__ import annotations

import dataclasses

import pytest

import exporters
from edgecomp.errors import EdgecompError
from exporters.parity import default_thresholds
from exporters.variants import Variant, parse_variants, split_name


def test_parse_reads_every_registered_name_back():
    for fmt, names in exporters.VARIANTS.items():
        for name in names:
            v = Variant.parse(fmt, name)
            assert (v.format, v.name, str(v), v.spec) == (fmt, name, name, f"{fmt}:{name}")
            assert v.sparse == name.endswith("-sparse") and v.precision == split_name(name)[0]
            assert v.calibrated == name.startswith(("int8", "int16x8"))
            assert v == Variant.from_spec(v.spec) and Variant.parse(fmt, v) is v


def test_variant_fields_and_file_names():
    v = Variant.parse("tflite", "int8-floatio-sparse")
    assert (v.precision, v.sparse, v.calibrated) == ("int8-floatio", True, True)
    assert v.filename("m") == "m_int8-floatio-sparse.tflite"
    assert Variant.parse("onnx", "dynamic").filename("compressed") == "compressed_dynamic.onnx"
    assert not Variant("onnx", "dynamic").calibrated and Variant("onnx", "int16x8").calibrated
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.sparse = False
    with pytest.raises(EdgecompError, match="not a precision"):
        Variant("tflite", "int8-sparse")


@pytest.mark.parametrize("fmt,name,message", [
    ("tflite", "int3", "format 'tflite' has no variant 'int3'; use one of: fp32"),
    ("onnx", "fp16", "format 'onnx' has no variant 'fp16'"),
    ("tflitee", "fp32", "unknown export format 'tflitee'; use one of: onnx, tflite"),
])
def test_unknown_names_are_one_line_errors(fmt, name, message):
    with pytest.raises(EdgecompError, match=message) as info:
        Variant.parse(fmt, name)
    assert "\n" not in str(info.value)


def test_from_spec_needs_a_format():
    assert Variant.from_spec("tflite:int8") == Variant("tflite", "int8")
    with pytest.raises(EdgecompError, match="not FORMAT:VARIANT"):
        Variant.from_spec("int8")
    with pytest.raises(EdgecompError, match="is not a onnx variant"):
        Variant.parse("onnx", Variant("tflite", "fp32"))


def test_parse_variants_applies_each_name_to_each_format_that_has_it():
    variants, skipped = parse_variants("tflite, onnx", "fp32,fp16,int8-floatio")
    assert [v.spec for v in variants] == ["tflite:fp32", "tflite:fp16", "tflite:int8-floatio", "onnx:fp32"]
    assert skipped == [{"format": "onnx", "variant": "fp16", "reason": "onnx has no fp16 variant"},
                       {"format": "onnx", "variant": "int8-floatio", "reason": "onnx has no int8-floatio variant"}]
    assert parse_variants(["onnx"], ["int8", "int8-sparse"])[0] == [Variant("onnx", "int8"),
                                                                    Variant("onnx", "int8", sparse=True)]
    with pytest.raises(EdgecompError, match=r"no format in 'onnx' has variant\(s\) fp16, int3; onnx: fp32"):
        parse_variants("onnx", "fp32,fp16,int3")
    with pytest.raises(EdgecompError, match="unknown export format 'coreml'"):
        parse_variants("tflite,coreml", "fp32")


def test_sparse_variants_share_their_precisions_thresholds():
    for fmt, names in exporters.VARIANTS.items():
        for name in names:
            assert default_thresholds(name) == default_thresholds(Variant.parse(fmt, name).precision)
    assert default_thresholds("int8-sparse") == default_thresholds("int8") != {}
    assert default_thresholds(None) == {} and default_thresholds("mystery") == {}
