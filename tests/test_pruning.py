import numpy as np
import pytest

from edgecomp.errors import EdgecompError
from edgecomp.models import build_model
from edgecomp.pruning import filter_mask, hold_masks, prunable_kernels, prune


@pytest.mark.parametrize("shape", [(3, 3, 8, 16), (64, 10), (5, 4, 7), (2, 2, 2, 3, 4)])
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.8, 0.9, 0.99])
def test_filter_mask_sparsity_equals_rate_per_filter(shape, rate):
    w = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    mask = filter_mask(w, rate)
    per_filter = mask.reshape(-1, shape[-1])
    n = per_filter.shape[0]
    dropped = n - per_filter.sum(axis=0)
    # each filter loses floor(n*rate) weights: within one weight of rate*n
    assert np.all(dropped == int(n * rate))
    assert np.all(np.abs(dropped - rate * n) < 1)
    # the kept weights are the largest of their filter
    flat = np.abs(w.reshape(-1, shape[-1]))
    for j in range(shape[-1]):
        kept, gone = flat[per_filter[:, j], j], flat[~per_filter[:, j], j]
        if len(gone) and len(kept):
            assert kept.min() >= gone.max()


def test_filter_mask_ties_still_drop_exact_count():
    w = np.ones((10, 3), np.float32)
    assert (filter_mask(w, 0.5).sum(axis=0) == 5).all()


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_rate_is_refused(rate):
    with pytest.raises(EdgecompError, match="compress rate"):
        filter_mask(np.ones((4, 4)), rate)


def _tiny_model():
    return build_model("vgg", (12, 12, 1), 3, width=0.125)


def test_prune_skips_first_layer_by_default():
    model = _tiny_model()
    kernels = prunable_kernels(model, skip_first=False)
    masks = prune(model, 0.75)
    assert kernels[0].path not in masks
    assert set(masks) == {k.path for k in kernels[1:]}
    assert np.count_nonzero(kernels[0].numpy()) == kernels[0].numpy().size
    masks_all = prune(_tiny_model(), 0.75, skip_first=False)
    assert len(masks_all) == len(kernels)


def test_prune_refuses_nan_weights():
    model = _tiny_model()
    k = prunable_kernels(model)[0]
    w = k.numpy()
    w[0, 0, 0, 0] = np.nan
    k.assign(w)
    with pytest.raises(EdgecompError, match="NaN"):
        prune(model, 0.5)


def test_masks_stay_exact_through_adam_fine_tuning():
    import keras
    from edgecomp import train

    model = _tiny_model()
    rng = np.random.default_rng(0)
    x = rng.random((96, 12, 12, 1)).astype(np.float32)
    y = rng.integers(0, 3, 96)
    masks = prune(model, 0.8)
    before = {v.path: v.numpy().copy() for v in model.weights}
    with hold_masks(model, masks):
        train.fit(model, x, y, epochs=3, batch_size=16, verbose=0, learning_rate=1e-2)
        by_path = {v.path: v for v in model.weights}
        for path, mask in masks.items():
            w = by_path[path].numpy()
            assert np.all(w[~mask] == 0.0), path          # exactly zero, every pruned weight
    changed = [p for p in masks if not np.allclose(before[p], by_path[p].numpy())]
    assert changed, "fine-tuning should have moved the kept weights"
    # constraints are removed after the block: training again may move pruned weights
    assert all(by_path[p].constraint is None for p in masks)
    assert isinstance(model, keras.Model)
