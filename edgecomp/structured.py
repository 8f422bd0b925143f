"""Structured (channel) pruning: a genuinely smaller Keras model, with whole channels removed.

:class:`~edgecomp.structured_groups.Dependencies` finds the channels that go together; a criterion
(:class:`L1Norm`, :class:`L2Norm`, :class:`BNScale`, :class:`Taylor`, or a registered one) ranks them;
the model is rebuilt with fewer filters/units (same layer names) and the kept weights copied.

    >>> small, report = prune_channels(model, keep=0.5)
    >>> small.save("small.keras")        # plain Keras: loads in safe mode; report.summary() says what went
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from edgecomp.errors import EdgecompError
from edgecomp.graph import ModelGraph, count_macs
from edgecomp.match import matches
from edgecomp.structured_groups import WEIGHT_ROLES, Dependencies, planned_macs, rebuild

__all__ = ["prune_channels", "search_keep", "count_macs", "plan_channels", "StructuredReport", "Importance",
           "L1Norm", "L2Norm", "BNScale", "Taylor", "IMPORTANCE", "register_importance", "get_importance",
           "bn_sparsity", "bn_l1_penalty", "Dependencies"]

MIN_KEEP = 1e-6  #: the smallest keep ratio a search tries: every group at its minimum (1, or round_to)

IMPORTANCE: dict[str, type] = {}


def register_importance(name: str):
    """Class decorator: register an :class:`Importance` subclass under ``name``."""
    def wrap(cls):
        cls.name, IMPORTANCE[name] = name, cls
        return cls
    return wrap


class Importance:
    """A criterion: ``scores(model, deps, data)`` -> ``{group id: one score per channel}``; a group
    it gives no score is ranked by :class:`L1Norm` instead (the report says so). Options live in
    attributes named like the ``__init__`` arguments, so ``get_config``/``from_config`` round-trip."""

    name = ""

    def get_config(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def scores(self, model, deps: Dependencies, data=None) -> dict[int, np.ndarray]:
        raise NotImplementedError


def _accumulate(model, deps, value, final) -> dict[int, np.ndarray]:
    """Per group and channel: ``final(sum of value(path, var))`` over the weights indexing the channel."""
    acc: dict[int, np.ndarray] = {}
    for path, roles in deps.roles.items():
        table = WEIGHT_ROLES.get(deps.kinds[path], {})
        for var in model.get_layer(path).weights if table else ():
            v = value(path, var) if var.name in table else None
            for axis, role in table.get(var.name, {}).items() if v is not None else ():
                ax = axis % v.ndim
                deps.spread(roles.get(role), v.sum(axis=tuple(i for i in range(v.ndim) if i != ax)), acc)
    return {root: final(s) for root, s in acc.items()}


@register_importance("l1")
class L1Norm(Importance):
    """Sum of |w| over a channel's trainable weights in its group (filters, biases, BN gamma/beta,
    depthwise kernels, consumers' input rows)."""

    def scores(self, model, deps, data=None):
        return _accumulate(model, deps, lambda p, v: np.abs(v.numpy()) if v.trainable else None, lambda s: s)


@register_importance("l2")
class L2Norm(Importance):
    """Euclidean norm of a channel's trainable weights in its group."""

    def scores(self, model, deps, data=None):
        return _accumulate(model, deps, lambda p, v: np.square(v.numpy()) if v.trainable else None, np.sqrt)


@register_importance("bn_scale")
class BNScale(Importance):
    """Sum of |gamma| of the group's BatchNorms (network slimming, Liu et al. 2017); train with
    :func:`bn_sparsity` first so that unimportant channels' gammas go to zero."""

    def scores(self, model, deps, data=None):
        def gamma(path, var):
            return np.abs(var.numpy()) if deps.kinds[path] == "BatchNormalization" and var.name == "gamma" else None
        return _accumulate(model, deps, gamma, lambda s: s)


@register_importance("taylor")
class Taylor(Importance):
    """First-order Taylor (Molchanov et al. 2019): |sum of w * dL/dw| over a channel's weights, the
    gradients summed over ``batches`` batches of ``data``. ``loss``: a Keras loss name; by default the
    compiled loss, else (sparse) categorical cross-entropy, from logits unless the output is a softmax."""

    def __init__(self, batches: int = 4, batch_size: int = 32, loss: str | None = None):
        self.batches, self.batch_size, self.loss = int(batches), int(batch_size), loss

    def scores(self, model, deps, data=None):
        import tensorflow as tf

        if data is None:
            raise EdgecompError("importance 'taylor' needs data", fix="pass data=(x, y) or a Dataset")
        variables = model.trainable_variables
        totals = {id(v): np.zeros(v.shape, np.float64) for v in variables}
        # gradients with respect to the weights' values (stateless_call), not the variables: the
        # same on one device and under a tf.distribute strategy, whose variables have no handle here
        values = [tf.constant(v.numpy()) for v in variables]
        fixed = [tf.constant(v.numpy()) for v in model.non_trainable_variables]
        for x, y in _batches(data, self.batches, self.batch_size):
            with tf.GradientTape() as tape:
                tape.watch(values)
                pred, _ = model.stateless_call(values, fixed, x, training=False)
                loss = _loss_for(model, deps.graph, y, self.loss)(y, pred)
            for v, g in zip(variables, tape.gradient(loss, values)):
                totals[id(v)] += 0 if g is None else np.asarray(g, np.float64)
        return _accumulate(model, deps, lambda p, v: v.numpy() * totals[id(v)] if id(v) in totals else None, np.abs)


def _batches(data, batches: int, batch_size: int):
    data = (data.x_train, data.y_train) if hasattr(data, "x_train") else data
    if isinstance(data, (tuple, list)) and len(data) == 2 and hasattr(data[0], "shape"):
        x, y = np.asarray(data[0], np.float32), np.asarray(data[1])
        data = ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size))
    out = [(np.asarray(x, np.float32), np.asarray(y)) for _, (x, y) in zip(range(max(1, batches)), data)]
    if not out or not len(out[0][0]):
        raise EdgecompError("the data for the importance criterion is empty", fix="pass some (x, y) samples")
    return out


def _loss_for(model, graph, y, loss):
    import keras

    if loss:  # never model.loss: a model compiled for distillation takes packed targets
        return keras.losses.get(loss)
    last = graph.outputs[0].producer.layer
    act = getattr(getattr(last, "activation", None), "__name__", "")
    logits = type(last).__name__ != "Softmax" and act != "softmax"
    sparse = np.issubdtype(np.asarray(y).dtype, np.integer)
    return (keras.losses.SparseCategoricalCrossentropy if sparse else keras.losses.CategoricalCrossentropy)(logits)


def get_importance(spec) -> Importance:
    """An :class:`Importance` from a registered name, ``{"name": ..., "config": {...}}``, or an instance."""
    if isinstance(spec, Importance):
        return spec
    name, config = (spec.get("name"), spec.get("config") or {}) if isinstance(spec, dict) else (spec, {})
    if name not in IMPORTANCE:
        raise EdgecompError(f"unknown importance criterion {name!r}", fix=f"use one of: {', '.join(IMPORTANCE)}")
    return IMPORTANCE[name].from_config(config)


def _batchnorms(model):
    return [n.layer for n in ModelGraph(model).layer_nodes() if n.kind == "BatchNormalization" and n.layer.scale]


@contextlib.contextmanager
def bn_sparsity(model, strength: float = 1e-4):
    """Within the block, every BatchNorm gamma carries an L1 penalty (``strength * sum |gamma|``).

    Keras adds variable regularizers to the loss inside the train step, so compile the model
    inside the block (and again after it). The previous regularizers come back on exit.

    Example:
        >>> with bn_sparsity(model, 1e-4):
        ...     model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        ...     model.fit(x, y, epochs=3)
        >>> small, report = prune_channels(model, keep=0.5, importance="bn_scale")
    """
    import keras

    saved = [(bn.gamma, bn.gamma.regularizer) for bn in _batchnorms(model)]
    for gamma, _ in saved:
        gamma.regularizer = keras.regularizers.L1(float(strength))
    try:
        yield model
    finally:
        for gamma, regularizer in saved:
            gamma.regularizer = regularizer


def bn_l1_penalty(model, strength: float = 1e-4):
    """``strength * sum |gamma|`` over the model's BatchNorms, for a custom training loop's loss."""
    from keras import ops
    return float(strength) * sum((ops.sum(ops.abs(bn.gamma)) for bn in _batchnorms(model)), ops.zeros(()))


def _check_keep(keep, what: str = "keep ratio") -> float:
    try:
        value = math.nan if isinstance(keep, bool) else float(keep)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise EdgecompError(f"{what} must be in (0, 1], got {keep!r}", fix="pass e.g. 0.5 to keep half the channels")
    return value


def _check_options(ranking, round_to) -> int:
    if ranking not in ("uniform", "global"):
        raise EdgecompError(f"unknown ranking {ranking!r}", fix="use 'uniform' or 'global'")
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise EdgecompError(f"round_to must be a whole number >= 1, got {round_to!r}", fix="pass 1 or e.g. 8")
    return int(round_to)


def _count(n: int, ratio: float, round_to: int) -> int:
    c = max(1, int(math.floor(n * ratio + 0.5)))
    if round_to > 1:
        c = max(round_to, int(math.floor(c / round_to + 0.5)) * round_to)
    return min(n, c)


def _ratios(model, deps, keep) -> tuple[float | None, dict[int, float]]:
    """``(default ratio, {group id: ratio})`` from a float or a ``{glob: ratio}`` dict (first match wins)."""
    if not isinstance(keep, dict):
        return _check_keep(keep), {}
    paths = list(dict.fromkeys(n.path for n in deps.graph.layer_nodes()))
    weights = {p: [v.path for v in model.get_layer(p).weights] if "/" not in p else [] for p in paths}
    ratios: dict[int, float] = {}
    for pattern, ratio in keep.items():
        ratio = _check_keep(ratio, f"keep ratio for {pattern!r}")
        hit = [p for p in paths if matches(pattern, p) or any(matches(pattern, p, w) for w in weights[p])]
        if not hit:
            raise EdgecompError(f"no layer matches {pattern!r}", fix="check the layer names (model.summary())")
        groups = [g for p in hit for g in deps.groups_of(p)]
        if not any(g.prunable for g in groups):
            why = "; ".join(dict.fromkeys(r for g in groups for r in g.reasons)) or "it has no channels of its own"
            raise EdgecompError(f"cannot prune the channels of {pattern!r} ({', '.join(hit[:4])}): {why}",
                                fix="leave it out of the per-layer keep ratios")
        for g in groups:
            if g.prunable:
                ratios.setdefault(g.id, ratio)
    return None, ratios


def plan_channels(model, deps: Dependencies, scores: dict, keep=0.5, ranking: str = "uniform",
                  round_to: int = 1) -> dict[int, np.ndarray]:
    """``{group id: kept channel indices (sorted)}`` for every prunable group (see :func:`prune_channels`;
    ``global`` ranking pools the groups under the default ratio, scores divided by each group's mean)."""
    round_to = _check_options(ranking, round_to)
    default, ratios = _ratios(model, deps, keep)
    groups = deps.prunable
    score = {g.id: np.asarray(scores[g.id], np.float64) for g in groups}
    counts = {g.id: _count(g.channels, ratios.get(g.id, default or 1.0), round_to) for g in groups}
    pooled = [g for g in groups if g.id not in ratios] if ranking == "global" and default is not None else []
    if pooled:
        norm = {g.id: score[g.id] / (score[g.id].mean() or 1.0) for g in pooled}
        picked = {g.id: min(g.channels, round_to) for g in pooled}
        budget = int(math.floor(default * sum(g.channels for g in pooled) + 0.5)) - sum(picked.values())
        rest = sorted(((-v, gid, i) for gid, s in norm.items() for i, v in enumerate(np.sort(s)[::-1][picked[gid]:])))
        for _, gid, _ in rest[:max(0, budget)]:
            picked[gid] += 1
        counts.update({g.id: _count(g.channels, picked[g.id] / g.channels, round_to) for g in pooled})
    return {g.id: np.sort(np.argsort(-score[g.id], kind="stable")[:counts[g.id]]) for g in groups}


@dataclass
class StructuredReport:
    """What :func:`prune_channels` did: per group (name, producers, members, channels before/after,
    kept indices, importance), the groups kept whole with their reasons, MACs and params."""
    keep: float | dict
    importance: dict
    ranking: str
    round_to: int
    groups: list = field(default_factory=list)
    kept_whole: list = field(default_factory=list)
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    target_macs: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return "\n".join([f"MACs {self.macs_before:,} -> {self.macs_after:,}, params {self.params_before:,} -> "
                          f"{self.params_after:,}"] + [f"  {g['name']}: {g['channels_before']} -> {g['channels_after']}"
                                                       for g in self.groups]
                         + [f"  {g['name']}: kept whole: {'; '.join(g['reasons'])}" for g in self.kept_whole])


class _Pruner:
    """A model's groups and importance scores, computed once for any number of keep ratios."""

    def __init__(self, model, importance, data, ranking, round_to):
        self.round_to, self.ranking = _check_options(ranking, round_to), ranking
        self.model, self.deps, self.criterion = model, Dependencies(model), get_importance(importance)
        scores, name = self.criterion.scores(model, self.deps, data), self.criterion.name
        fallback = L1Norm().scores(model, self.deps) if any(g.id not in scores for g in self.deps.prunable) else {}
        self.scores = {g.id: scores.get(g.id, fallback.get(g.id, np.zeros(g.channels))) for g in self.deps.prunable}
        self.label = {g.id: name if g.id in scores else f"l1 (no {name} score)" for g in self.deps.prunable}

    def plan(self, keep) -> dict[int, np.ndarray]:
        return plan_channels(self.model, self.deps, self.scores, keep, self.ranking, self.round_to)

    def prune(self, keep, target_macs=None):
        kept = self.plan(keep)
        small = rebuild(self.model, self.deps, kept)
        groups = [{"name": g.name, "producers": g.producers, "members": [f"{p}:{r}" for p, r in g.members],
                   "channels_before": g.channels, "channels_after": len(kept[g.id]), "kept": kept[g.id].tolist(),
                   "importance": self.label[g.id]} for g in self.deps.prunable]
        whole = [{"name": g.name, "producers": g.producers, "channels": g.channels, "reasons": g.reasons}
                 for g in self.deps.kept_whole]
        return small, StructuredReport(
            keep, {"name": self.criterion.name, "config": self.criterion.get_config()}, self.ranking, self.round_to,
            groups, whole, planned_macs(self.deps, {}), count_macs(small)[1], int(self.model.count_params()),
            int(small.count_params()), target_macs)


def _bisect(evaluate, target: float, steps: int):
    """The largest keep in [MIN_KEEP, 1] with ``evaluate(keep) <= target`` (evaluate grows with keep)
    as ``(keep, value)``; ``(None, value at MIN_KEEP)`` when even that is above the target."""
    best = (MIN_KEEP, evaluate(MIN_KEEP))
    if best[1] > target:
        return None, best[1]
    lo, hi, top = MIN_KEEP, 1.0, evaluate(1.0)
    if top <= target:
        return 1.0, top
    for _ in range(int(steps)):
        mid = (lo + hi) / 2
        value = evaluate(mid)
        lo, hi, best = (mid, hi, (mid, value)) if value <= target else (lo, mid, best)
    return best


def prune_channels(model, keep=None, *, importance="l1", data=None, target_macs: float | None = None,
                   ranking: str = "uniform", round_to: int = 1):
    """Remove whole channels: returns ``(smaller model, StructuredReport)``; ``model`` is unchanged.

    Args:
        model: a built Sequential or functional Keras 3 model (channels last).
        keep: the fraction of each group's channels to keep, in (0, 1] (default 0.5), or
            ``{glob: ratio}``: a glob matches a layer name or weight path, the first match wins,
            and groups no glob matches keep all their channels.
        importance: ``"l1"``, ``"l2"``, ``"bn_scale"``, ``"taylor"`` (needs ``data``), a
            ``{"name", "config"}`` dict, or an :class:`Importance` instance.
        data: ``(x, y)`` arrays, an iterable of ``(x, y)`` batches, or a Dataset (for ``taylor``).
        target_macs: instead of ``keep``, a fraction of the model's MACs: the largest uniform keep
            ratio whose smaller model has at most that fraction is found by bisection.
        ranking: ``"uniform"`` (each group keeps its ratio) or ``"global"`` (ranked across groups).
        round_to: keep a multiple of this many channels per group (e.g. 8), at least one multiple.

    Raises:
        EdgecompError: a ratio outside (0, 1], an unreachable MACs target (saying what was
            reached), a per-layer glob that matches no layer or only layers kept whole.

    Example:
        >>> small, report = prune_channels(build_model("vgg", (28, 28, 1), 10), keep=0.5)
        >>> print(report.summary())
    """
    if keep is not None and target_macs is not None:
        raise EdgecompError("pass either keep or target_macs, not both", fix="drop one of them")
    target = None if target_macs is None else _check_keep(target_macs, "target_macs")
    if keep is not None and not isinstance(keep, dict):
        _check_keep(keep)
    p = _Pruner(model, importance, data, ranking, round_to)
    if target is not None:
        base = max(1, planned_macs(p.deps, {}))
        keep, value = _bisect(lambda k: planned_macs(p.deps, p.plan(k)) / base, target, steps=24)
        if keep is None:
            whole = ", ".join(g.name for g in p.deps.kept_whole) or "no group"
            raise EdgecompError(f"cannot reach {target * 100:g}% of the MACs: reached {value:.1%} at the smallest "
                                "keep ratio", fix=f"raise the target (groups kept whole: {whole})")
    return p.prune(0.5 if keep is None else keep, target)


def search_keep(model, measure, target: float, *, importance="l1", data=None, ranking: str = "uniform",
                round_to: int = 1, steps: int = 8, what: str = "the target"):
    """The largest uniform keep ratio whose smaller model has ``measure(smaller) <= target``.

    Args:
        measure: a function of a Keras model that grows with the keep ratio (MACs, bytes, a
            measured latency); it is called ``steps + 2`` times, each on a freshly pruned model.
        what: how the error names the target (e.g. ``"0.2 ms on pixel7"``).

    Returns ``(keep, smaller model, StructuredReport, measured value)``; raises EdgecompError when
    even the smallest keep ratio measures above ``target``.

    Example:
        >>> keep, small, report, ms = search_keep(model, time_tflite, 0.2, what="0.2 ms")
    """
    pruner, best = _Pruner(model, importance, data, ranking, round_to), {}

    def evaluate(k):
        small, report = pruner.prune(k)
        value = float(measure(small))
        if value <= target and k >= best.get("keep", 0.0):
            best.update(keep=k, model=small, report=report)
        return value

    keep, value = _bisect(evaluate, float(target), steps)
    if keep is None:
        raise EdgecompError(f"cannot reach {what}: reached {value:.4g} at the smallest keep ratio",
                            fix="raise the target, or prune the groups kept whole some other way")
    return keep, best["model"], best["report"], value
