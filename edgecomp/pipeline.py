"""``compress(model, data, recipe)``: [structured prune -> fine-tune]* -> prune -> fine-tune with
masks held -> share weights -> fine-tune centroids -> store (the stages of :mod:`edgecomp.recipe`).

    >>> result = compress(model, dataset, rate=0.8)                    # the seed's method
    >>> result = compress(model, dataset, rate=0.9, method="deep",     # Deep Compression
    ...                   schedule="iterative:3", bits="conv=8,dense=5")
    >>> result = compress(model, dataset, Recipe.from_options(method="deep"))   # a recipe object
    >>> result.save("vgg.ecz")
    >>> small = result.decode()           # the Keras model the container restores

``method="seed"`` stores the kept weights as linear int8 values with uint8 relative
indices. ``method="deep"`` adds k-means weight sharing with fine-tuned centroids and
entropy-coded centroid indices and index gaps (:mod:`edgecomp.codec`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgecomp import codec, distribute, pruning, store, train
from edgecomp.errors import EdgecompError
from edgecomp.io import write_bytes
from edgecomp.pruning_config import Gradual, Iterative
from edgecomp.recipe import Recipe

#: What each coding method's streams hold, for the per-stream report.
BITS = {"raw": 32, "seed": 8}


@dataclasses.dataclass
class CompressedModel:
    """A pruned (and, for ``deep``, weight-shared) model, its masks, container bytes and report."""

    model: object
    masks: dict[str, np.ndarray]
    container: bytes
    report: list[dict]
    settings: dict
    history: list[dict] = dataclasses.field(default_factory=list)
    recipe: Recipe | None = None
    #: What a search (the budgeted one) found on the way, for the report; not part of the recipe.
    search: dict | None = None
    #: The structured stage's report (MACs/params before and after, groups, kept-whole reasons).
    structured: dict | None = None
    #: The QAT stage's model (int8 simulated; its int8 exports use the trained ranges) and record.
    qat_model: object = None
    qat: dict | None = None
    #: Where training ran and how fast (:meth:`edgecomp.distribute.Session.summary`).
    distribute: dict | None = None

    @property
    def macs(self) -> int:
        """Multiply-adds of one inference (batch 1) of the compressed model."""
        return sum(r.get("macs", 0) for r in self.report)

    @property
    def params(self) -> int:
        return sum(r["params"] for r in self.report)

    @property
    def nonzeros(self) -> int:
        return sum(r["nonzeros"] for r in self.report)

    @property
    def bytes(self) -> int:
        return len(self.container)

    def save(self, path) -> int:
        """Write the container atomically; returns its size in bytes."""
        write_bytes(path, self.container)
        return len(self.container)

    def decode(self):
        """The Keras model rebuilt from the container (what a device would get; after QAT, the
        QAT model over the decoded weights and stored ranges)."""
        return store.decode_model(self.container)


def _xy(data):
    if data is None:
        return None, None
    if hasattr(data, "x_train"):
        return data.x_train, data.y_train
    x, y = data
    return x, y


def _report(model, container: bytes, masks) -> list[dict]:
    from edgecomp.structured import count_macs

    weights = store.model_weights(model)
    try:
        macs = count_macs(model)[0]           # by layer path, as the weight paths begin
    except EdgecompError:  # e.g. an input without a fixed shape: no MACs column
        macs = {}
    seen, rows = set(), []
    for rec in codec.tensor_records(container):
        w = weights[rec.name]
        method = codec.METHOD_NAMES[rec.method]
        names = codec.STREAM_NAMES.get(method, ())
        rows.append({"name": rec.name, "shape": list(rec.shape), "params": rec.size,
                     "nonzeros": int(np.count_nonzero(w)), "pruned": rec.name in masks,
                     "sparsity": float(1 - np.count_nonzero(w) / max(1, w.size)),
                     "method": method, "bits": int(rec.params[0]) if method == "deep" else BITS.get(method),
                     "bytes": rec.stream_bytes,
                     "streams": {n: len(s) for n, s in zip(names, rec.streams)}})
        layer = rec.name.rsplit("/", 1)[0]
        if layer in macs and layer not in seen:  # a layer's MACs on its first tensor's row
            rows[-1]["macs"] = macs[layer]
            seen.add(layer)
    return rows


def _check_rules(model, recipe: Recipe) -> None:
    """Every per-layer rule must match a prunable layer (a typo would otherwise do nothing)."""
    from edgecomp.match import layer_name, unmatched

    paths = [v.path for v in pruning.prunable_kernels(model, skip_first=False)]
    bits = [(p, b) for p, b in (recipe.sharing.bits if recipe.sharing else ()) if p not in ("conv", "dense")]
    for flag, found in (("--layer-rates", recipe.pruning.layer_rates), ("per-layer criteria", recipe.pruning.layer_criteria),
                        ("--bits", bits)):
        bad = unmatched(found, paths)
        if bad:
            names = ", ".join(dict.fromkeys(layer_name(p) for p in paths))
            raise EdgecompError(f"{flag} rule '{bad[0]}' matches no prunable layer (a glob matches a layer name "
                                "or weight path)", fix=f"use one of: {names[:300]}")


def _prune_and_fine_tune(model, x, y, recipe: Recipe, *, verbose, history, checkpoints):
    """The pruning stage: masks by the recipe's criterion and rules, on its schedule, each step
    fine-tuned with the masks held. Checkpoint keys: ``prune-1`` .. ``prune-N`` (``pruned`` for gradual)."""
    cfg, ft, seed = recipe.pruning, recipe.fine_tune, recipe.seed
    if cfg.policy is not None:  # the runtime's constraint, as per-layer rules
        cfg = cfg.replace(layer_rates=cfg.layer_rates + cfg.policy.layer_rates(model))
    opts = dict(criterion=cfg.criterion, rates=cfg.layer_rates, criteria=cfg.layer_criteria, skip_first=cfg.skip_first)
    fit_opts = dict(epochs=ft.epochs, batch_size=ft.batch_size, learning_rate=ft.learning_rate,
                    lr_schedule=ft.lr_schedule, verbose=verbose)
    fit = x is not None and ft.epochs > 0
    if checkpoints is not None and checkpoints.done("pruned"):
        history.extend(checkpoints.info("pruned")["history"])
        return {k: v.astype(bool) for k, v in checkpoints.load("pruned", model).items()}
    if isinstance(cfg.schedule, Gradual) and fit:
        masks = {k: np.ones(v.shape, bool) for k, v in
                 ((k.path, k) for k in pruning.prunable_kernels(model, skip_first=cfg.skip_first))}
        total = ft.epochs * int(np.ceil(len(x) / ft.batch_size))
        with pruning.hold_masks(model, masks) as constraints:
            cb = pruning.gradual_pruning_callback(model, constraints, cfg.rate, total, cfg.schedule.updates, **opts)
            h = train.fit(model, x, y, seed=seed + 1, callbacks=[cb], **fit_opts)
            history.append({"stage": "gradual", "rate": cfg.rate, **{k: v[-1] for k, v in h.items()}})
        masks = pruning.compute_masks(model, cfg.rate, **opts)
        if checkpoints is not None:  # this stage's entry only: earlier stages keep their own
            checkpoints.save("pruned", model, masks, info={"history": history[-1:]})
        return masks
    iterative = isinstance(cfg.schedule, Iterative)
    rates = cfg.schedule.step_rates(cfg.rate) if iterative else [cfg.rate]
    masks = {}
    # Resume: the last finished step's checkpoint holds everything the earlier ones did.
    done = [i for i in range(1, len(rates) + 1) if checkpoints is not None and checkpoints.done(f"prune-{i}")]
    last = max(done, default=0)
    if last:
        history.extend(checkpoints.info(f"prune-{i}") for i in range(1, last + 1))
        masks = {k: v.astype(bool) for k, v in checkpoints.load(f"prune-{last}", model).items()}
    for i, r in enumerate(rates, 1):
        stage = f"prune-{i}"
        if i <= last:
            continue
        step_rules = tuple((k, v * i / len(rates)) for k, v in cfg.layer_rates) if iterative else cfg.layer_rates
        masks = pruning.prune(model, r, **{**opts, "rates": step_rules})
        if fit:
            with pruning.hold_masks(model, masks):
                h = train.fit(model, x, y, seed=seed + i, **fit_opts)
            history.append({"stage": stage, "rate": r, **{k: v[-1] for k, v in h.items()}})
        if checkpoints is not None:
            checkpoints.save(stage, model, masks, info=history[-1] if fit else {"stage": stage, "rate": r})
    return masks


def _share_and_fine_tune(model, x, y, recipe: Recipe, *, verbose, history, checkpoints) -> dict:
    """The sharing stage: k-means per kernel, then centroid fine-tuning. Checkpoint key: ``centroids``."""
    from edgecomp import weight_sharing

    cfg, seed = recipe.sharing, recipe.seed
    if checkpoints is not None and checkpoints.done("centroids"):
        arrays = checkpoints.load("centroids", model)
        history.append(checkpoints.info("centroids")["history"])
        return {p: weight_sharing.SharedTensor(arrays[p + "|codebook"], arrays[p + "|assignment"], b)
                for p, b in checkpoints.info("centroids")["bits"].items()}
    shared = weight_sharing.share_weights(model, bits=cfg.bits_map, init=cfg.init, seed=seed)
    entry = {"stage": "centroids", "epochs": 0}
    if x is not None and cfg.epochs > 0:
        losses = weight_sharing.fine_tune_centroids(model, shared, x, y, epochs=cfg.epochs,
                                                    batch_size=recipe.fine_tune.batch_size,
                                                    learning_rate=cfg.learning_rate, seed=seed + 100,
                                                    verbose=verbose)
        entry = {"stage": "centroids", "epochs": cfg.epochs, "loss": losses[-1]}
    history.append(entry)
    if checkpoints is not None:
        arrays = {}
        for p, st in shared.items():
            arrays[p + "|codebook"], arrays[p + "|assignment"] = st.codebook, st.assignment
        checkpoints.save("centroids", model, arrays,
                         info={"bits": {p: st.bits for p, st in shared.items()}, "history": entry})
    return shared


def _quantization_aware(model, x, y, recipe: Recipe, masks, shared, *, verbose, history, checkpoints):
    """The QAT stage: fake quantization where the int8 kernels quantize, then fine-tuning with the
    masks held and shared weights on their codebooks. Checkpoint key: ``qat``."""
    from edgecomp import qat

    if checkpoints is not None and checkpoints.done("qat"):
        checkpoints.load("qat", model)
        info = checkpoints.info("qat")
        history.append(info["history"])
        by_path = {v.path: v for v in model.weights}
        for p, st in (shared or {}).items():
            st.refresh(by_path[p].numpy())
        return qat.restore(model, info["qat"]), info["qat"]
    if x is None:
        raise EdgecompError("QAT needs training data", fix="pass data to compress, or drop --qat-epochs")
    qmodel, report = qat.quantize_model(model, recipe.qat)
    out = qat.fine_tune(qmodel, x, y, recipe.qat, batch_size=recipe.fine_tune.batch_size, masks=masks,
                        shared=shared, seed=recipe.seed + 200, verbose=verbose)
    entry = {"stage": "qat", "epochs": recipe.qat.epochs, "loss": out["loss"][-1] if out["loss"] else None}
    history.append(entry)
    info = qat.container_info(qmodel, recipe.qat, report)
    if checkpoints is not None:
        checkpoints.save("qat", model, info={"qat": info, "history": entry})
    return qmodel, info


def compress(model, data=None, recipe: Recipe | dict | None = None, *, verbose: int = 1, info: dict | None = None,
             checkpoints=None, measure=None, **options) -> CompressedModel:
    """Compress ``model`` by ``recipe`` and return a :class:`CompressedModel`.

    Args:
        model: a Keras 3 model with Conv/Dense layers; pruned and shared in place (the structured
            stage, when the recipe has one, builds a smaller model instead: ``result.model``).
        data: a :class:`~edgecomp.data.Dataset` or an ``(x, y)`` pair for fine-tuning; with
            ``None`` or zero epochs the model is pruned (and shared) only.
        recipe: a :class:`~edgecomp.recipe.Recipe` (or its ``get_config()`` dict); None: the defaults.
        verbose: Keras progress output.
        info: extra entries for the container's metadata (e.g. the model and data names).
        checkpoints: an :class:`edgecomp.checkpoint.Checkpoints`; each finished stage is saved under
            its name and skipped when already there.
        measure: ``Keras model -> ms``, for a structured latency target (the CLI passes one that
            exports and times the real file; the core itself runs no runtime).
        **options: flat options over the recipe, parsed once (:meth:`Recipe.from_options`):
            ``rate``, ``method``, ``criterion``, ``layer_rates``, ``schedule``, ``bits``, ...
            With ``distribute="mirrored"`` or ``"multi-worker"`` every training stage runs under
            that ``tf.distribute`` strategy (:mod:`edgecomp.distribute`); ``result.model`` is then
            a copy made under it, and ``result.distribute`` says where and how fast it trained.

    Example:
        >>> result = compress(model, ds, rate=0.8)                               # the seed's method
        >>> result = compress(model, ds, Recipe.from_options(method="deep", rate=0.9))
        >>> result.settings == result.recipe.get_config()
        True
    """
    if isinstance(recipe, dict):
        recipe = Recipe.from_config(recipe)
    if options or recipe is None:
        recipe = Recipe.from_options(recipe, **options)
    with distribute.session(recipe.distribute) as ses:
        ses.check_batch(recipe.fine_tune.batch_size)
        model = ses.adopt(model)
        result = _compress(model, data, recipe, verbose=verbose, info=info, checkpoints=checkpoints, measure=measure)
        result.distribute = ses.summary()
    return result


def _compress(model, data, recipe: Recipe, *, verbose, info, checkpoints, measure) -> CompressedModel:
    x, y = _xy(data)
    history: list[dict] = []
    _check_rules(model, recipe)  # structured pruning keeps layer names: a typo fails before any work
    if recipe.pruning.policy is not None:
        recipe.pruning.policy.check(model, recipe.pruning.rate)
    structured = None
    if recipe.structured is not None:
        from edgecomp.structured_stage import run_structured
        model, structured = run_structured(model, x, y, recipe, verbose=verbose, history=history,
                                           checkpoints=checkpoints, measure=measure)
    if not pruning.prunable_kernels(model, skip_first=recipe.pruning.skip_first):
        raise EdgecompError("the model has no prunable Conv/Dense kernels",
                            fix="compress a model with Conv or Dense layers")
    masks = _prune_and_fine_tune(model, x, y, recipe, verbose=verbose, history=history, checkpoints=checkpoints)
    if recipe.pruning.policy is not None:
        recipe.pruning.policy.verify(model, masks)
    shared = None
    if recipe.sharing is not None:
        shared = _share_and_fine_tune(model, x, y, recipe, verbose=verbose, history=history, checkpoints=checkpoints)
    qmodel = qat_info = None
    if recipe.qat is not None:
        qmodel, qat_info = _quantization_aware(model, x, y, recipe, masks, shared, verbose=verbose, history=history,
                                               checkpoints=checkpoints)
    if shared is None:
        specs = {name: "seed" for name in masks}
    else:
        specs = {name: codec.deep_spec(st, index_bits=recipe.coding.index_bits, coder=recipe.coding.coder)
                 for name, st in shared.items()}
    settings = recipe.get_config()
    meta = {"recipe": settings, **({"qat": qat_info} if qat_info else {}), **(info or {})}
    container = store.encode_model(model, specs, info=meta, small=recipe.coding.small)
    return CompressedModel(model, masks, container, _report(model, container, masks), settings, history, recipe,
                           structured=structured, qat_model=qmodel, qat=qat_info)
