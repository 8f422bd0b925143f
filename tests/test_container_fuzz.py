"""Property-based: truncated, bit-flipped and spliced containers decode or raise ContainerError only."""

import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from fuzz_container import corpus, fix_checksums, mutate  # noqa: E402

from edgecomp import codec  # noqa: E402
from edgecomp.errors import ContainerError  # noqa: E402

SEEDS = corpus()


def decodes_or_rejects(data: bytes):
    try:
        codec.decode_weights(data, max_elements=1 << 20)
    except ContainerError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(i=st.integers(0, len(SEEDS) - 1), cut=st.integers(0, 10_000))
def test_truncated(i, cut):
    data = SEEDS[i]
    decodes_or_rejects(data[:cut % len(data)])


@settings(max_examples=300, deadline=None)
@given(i=st.integers(0, len(SEEDS) - 1), flips=st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
       fix=st.booleans())
def test_bit_flipped(i, flips, fix):
    data = bytearray(SEEDS[i])
    for f in flips:
        data[(f // 8) % len(data)] ^= 1 << (f % 8)
    decodes_or_rejects(bytes(fix_checksums(data)) if fix else bytes(data))


@settings(max_examples=200, deadline=None)
@given(i=st.integers(0, len(SEEDS) - 1), j=st.integers(0, len(SEEDS) - 1), a=st.integers(0, 10**6),
       b=st.integers(0, 10**6), fix=st.booleans())
def test_spliced(i, j, a, b, fix):
    x, y = SEEDS[i], SEEDS[j]
    data = bytearray(x[:a % len(x)] + y[b % len(y):])
    decodes_or_rejects(bytes(fix_checksums(data)) if fix else bytes(data))


def test_random_mutations_smoke():
    rng = random.Random(1)
    for _ in range(2000):
        decodes_or_rejects(mutate(rng, SEEDS))


@pytest.mark.parametrize("i", range(len(SEEDS)))
def test_corpus_decodes(i):
    codec.decode_weights(SEEDS[i])


def test_mutated_model_descriptions_decode_or_reject(tmp_path):
    """Structure-aware mutations of real models' descriptions (sizes, classes, nesting, node
    references, shared layers) reach store.decode_model: ContainerError or a model, nothing else."""
    from fuzz_container import fuzz_descriptions
    out = fuzz_descriptions(40, seed=3, hang_s=5.0, crashes_dir=tmp_path)
    assert out["crash"] == 0, out["crash_kinds"]
    assert out["hang"] == 0 and out["rejected"] > 0 and out["ok"] + out["rejected"] == 40
