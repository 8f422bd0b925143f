"""The recipe's structured stage: remove whole channels in steps, fine-tuning after each.

It runs first in :func:`edgecomp.compress`, on a copy: the result is a genuinely smaller dense
model (fewer filters and units, same layer names) that then goes through magnitude pruning,
weight sharing and coding like any model. The keep ratio comes from ``keep`` (and per-layer
``layer_keep`` rules), a MACs target, or a measured latency target (a search that times the
real exported file: the caller passes the measuring function, since the core runs no runtime).

    >>> recipe = Recipe.from_options(channels=0.35, structured_steps=2, distill="4,0.7", method="deep")
    >>> result = compress(model, ds, recipe)          # result.model is the smaller model
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from edgecomp import train
from edgecomp.distill import Distill, fit_distilled
from edgecomp.errors import EdgecompError
from edgecomp.pruning_config import Config, rules, whole_number


def _keep(value) -> float:
    from edgecomp.structured import _check_keep
    return _check_keep(value, "channel keep ratio")


@dataclasses.dataclass(frozen=True)
class Structured(Config):
    """Structured (channel) pruning settings.

    Args:
        keep: fraction of each dependency group's channels to keep, in (0, 1].
        layer_keep: ``(glob, ratio)`` rules per layer (first match wins); with no ``keep``, groups
            no rule matches are kept whole.
        target_macs: instead, the fraction of the model's MACs to reach.
        target_latency: instead, the measured latency (ms, batch 1) to reach on ``profile``.
        profile: the runtime_bench target profile the latency target is measured on.
        importance: ``l1``, ``l2``, ``bn_scale``, ``taylor`` (:mod:`edgecomp.structured`).
        ranking: ``uniform`` (each group keeps the ratio) or ``global``.
        round_to: kept channel counts are multiples of this.
        steps: prune in this many steps towards the final ratio, fine-tuning after each.
        epochs: fine-tuning epochs after each step (the recipe's FineTune gives batch size and rate).
        distill: distil from the unpruned model while fine-tuning (:class:`~edgecomp.distill.Distill`).
        sparsity, sparsity_epochs: network slimming's sparsity phase before the first step: this many
            epochs of training (on a copy) with an L1 penalty of ``sparsity`` on every BatchNorm gamma,
            so that ``bn_scale`` importance finds channels that can go (0: no such phase).
    """

    keep: float | None = None
    layer_keep: tuple = ()
    target_macs: float | None = None
    target_latency: float | None = None
    profile: str = "mobile-big"
    importance: str = "l1"
    ranking: str = "uniform"
    round_to: int = 1
    steps: int = 1
    epochs: int = 1
    distill: Distill | None = None
    sparsity: float = 0.0
    sparsity_epochs: int = 0
    kind: ClassVar[str] = ""

    def __post_init__(self):
        from edgecomp.structured import IMPORTANCE
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if self.keep is not None:
            set_("keep", _keep(self.keep))
        set_("layer_keep", rules(self.layer_keep, "per-layer keep ratio", _keep))
        targets = [n for n in ("keep", "target_macs", "target_latency") if getattr(self, n) is not None]
        if len(targets) > 1:
            raise EdgecompError(f"structured pruning takes one of --channels, --target-macs, --target-latency, "
                                f"got {', '.join(targets)}", fix="pass only one")
        if self.layer_keep and (self.target_macs is not None or self.target_latency is not None):
            raise EdgecompError("per-layer --channels rules and a MACs or latency target can't be combined "
                                "(the target search sets one ratio for every group)",
                                fix="use the rules with a keep ratio, or the target alone")
        if not targets and not self.layer_keep:
            raise EdgecompError("structured pruning needs a keep ratio or a target",
                                fix="pass --channels R, --target-macs F or --target-latency MS")
        if self.target_macs is not None:
            set_("target_macs", _keep(self.target_macs))
        if self.target_latency is not None:
            ms = float(self.target_latency)
            if not ms > 0 or ms == float("inf"):
                raise EdgecompError(f"--target-latency must be > 0 ms, got {self.target_latency}", fix="e.g. 0.2")
            set_("target_latency", ms)
        if self.importance not in IMPORTANCE:
            raise EdgecompError(f"unknown importance criterion {self.importance!r}",
                                fix=f"use one of: {', '.join(IMPORTANCE)}")
        if self.ranking not in ("uniform", "global"):
            raise EdgecompError(f"unknown channel ranking {self.ranking!r}", fix="use uniform or global")
        for name, low in (("round_to", 1), ("steps", 1), ("epochs", 0)):
            whole_number(f"structured {name}", getattr(self, name), low)
        set_("distill", Distill.parse(self.distill))
        whole_number("BatchNorm sparsity epochs", self.sparsity_epochs)
        strength = float(self.sparsity)
        if not (strength >= 0 and strength != float("inf")):
            raise EdgecompError(f"BatchNorm sparsity must be >= 0, got {self.sparsity}", fix="e.g. --bn-sparsity 1e-4,2")
        set_("sparsity", strength)
        if (strength > 0) != (self.sparsity_epochs > 0):
            raise EdgecompError("a BatchNorm sparsity phase needs both a strength and epochs",
                                fix="write --bn-sparsity STRENGTH,EPOCHS, e.g. 1e-4,2")


def structured_from_options(base: Structured | None = None, **o) -> Structured:
    """A :class:`Structured` from flat options: ``channels`` (``0.5`` or ``"0.5,fc1=0.3"``),
    ``layer_channels``, ``target_macs``, ``target_latency``, ``latency_profile``, ``importance``,
    ``ranking``, ``round_to``, ``structured_steps``, ``structured_epochs``, ``distill`` (``"T,W"``),
    ``bn_sparsity`` (``"STRENGTH[,EPOCHS]"``)."""
    fields = {}
    channels = o.pop("channels", None)
    if isinstance(channels, str):
        layer = []
        for part in filter(None, (p.strip() for p in channels.split(","))):
            key, sep, val = part.rpartition("=")
            if sep:
                layer.append((key.strip(), val.strip()))
            else:
                fields["keep"] = val
        if layer:
            fields["layer_keep"] = tuple(layer)
    elif channels is not None:
        fields["keep"] = channels
    if "bn_sparsity" in o:
        strength, _, epochs = str(o.pop("bn_sparsity")).partition(",")
        try:
            fields["sparsity"], fields["sparsity_epochs"] = float(strength), int(epochs or 1)
        except ValueError:
            raise EdgecompError(f"bad --bn-sparsity {strength}{',' if epochs else ''}{epochs}",
                                fix="write STRENGTH[,EPOCHS], e.g. 1e-4,2") from None
    if "layer_channels" in o:
        fields["layer_keep"] = tuple(fields.get("layer_keep", ())) + tuple(dict(o.pop("layer_channels")).items())
    names = {"target_macs": "target_macs", "target_latency": "target_latency", "latency_profile": "profile",
             "importance": "importance", "ranking": "ranking", "round_to": "round_to",
             "structured_steps": "steps", "structured_epochs": "epochs", "distill": "distill"}
    fields.update({names[k]: v for k, v in o.items()})
    if base is None:
        return Structured(**fields)
    if {"keep", "target_macs", "target_latency"} & set(fields):  # a new target replaces the old one
        fields = {"keep": None, "target_macs": None, "target_latency": None, **fields}
    return dataclasses.replace(base, **fields)


def _step_keep(ratio: float, i: int, steps: int) -> float:
    """The keep ratio of step ``i`` relative to step ``i - 1``, so that step ``i`` keeps
    ``1 - (1 - ratio) * i / steps`` of the original channels."""
    overall = lambda j: 1.0 - (1.0 - ratio) * j / steps  # noqa: E731
    return overall(i) / overall(i - 1)


def _step_spec(cfg: Structured, final: float | None, i: int):
    """What step ``i`` of :func:`run_structured` passes to ``prune_channels``."""
    rules_i = {p: _step_keep(r, i, cfg.steps) for p, r in cfg.layer_keep}
    if not rules_i:
        return _step_keep(final, i, cfg.steps)
    return {**rules_i, **({"*": _step_keep(final, i, cfg.steps)} if final is not None else {})}


def _final_keep(model, cfg: Structured, x, y, measure, macs_before: int) -> tuple[float | None, dict]:
    """The overall keep ratio (None: rules only) and what the target search found."""
    from edgecomp.structured import count_macs, search_keep

    if cfg.target_macs is None and cfg.target_latency is None:
        return cfg.keep, {}
    opts = dict(importance=cfg.importance, data=(x, y) if x is not None else None, ranking=cfg.ranking,
                round_to=cfg.round_to)
    if cfg.target_macs is not None:
        keep, _, _, value = search_keep(model, lambda m: count_macs(m)[1] / macs_before, cfg.target_macs,
                                        what=f"{cfg.target_macs:.1%} of the MACs", **opts)
        return keep, {"target_macs": cfg.target_macs, "searched_keep": keep, "searched_macs_fraction": value}
    if measure is None:
        raise EdgecompError("a latency target needs a measured latency, and compress() was given no measure",
                            fix="use the edgecomp CLI, or pass measure=(a function: Keras model -> ms)")
    keep, _, _, value = search_keep(model, measure, cfg.target_latency, what=f"{cfg.target_latency} ms on {cfg.profile}",
                                    **opts)
    return keep, {"target_latency_ms": cfg.target_latency, "profile": cfg.profile, "searched_keep": keep,
                  "measured_ms": value}


def _sparsity_phase(model, x, y, cfg: Structured, recipe, verbose: int, history: list):
    """Network slimming's sparsity training, on a copy (the unpruned model stays the teacher)."""
    import keras

    from edgecomp.structured import bn_sparsity

    student = keras.models.clone_model(model)
    student.set_weights(model.get_weights())
    ft = recipe.fine_tune
    with bn_sparsity(student, cfg.sparsity):     # train.fit compiles inside the block: the penalty applies
        h = train.fit(student, x, y, epochs=cfg.sparsity_epochs, batch_size=ft.batch_size, seed=recipe.seed + 199,
                      learning_rate=ft.learning_rate, lr_schedule=ft.lr_schedule, verbose=verbose)
    history.append({"stage": "bn-sparsity", "strength": cfg.sparsity, "epochs": cfg.sparsity_epochs,
                    **{k: v[-1] for k, v in h.items()}})
    return student


def run_structured(model, x, y, recipe, *, verbose: int, history: list, checkpoints=None, measure=None):
    """The structured stage: returns ``(smaller model, report dict)``; ``model`` (the teacher) is unchanged.

    Checkpoint keys: ``structured-1`` .. ``structured-N`` (each holds the smaller architecture too).
    """
    from edgecomp.structured import count_macs, prune_channels

    cfg, ft, seed = recipe.structured, recipe.fine_tune, recipe.seed
    macs_before = count_macs(model)[1]
    params_before = model.count_params()
    widths = channel_widths(model)
    done = [i for i in range(1, cfg.steps + 1) if checkpoints is not None and checkpoints.done(f"structured-{i}")]
    last = max(done, default=0)
    if last == cfg.steps:  # resume: the last step holds the final smaller model and the report
        info = checkpoints.info(f"structured-{last}")
        history.extend(checkpoints.info(f"structured-{i}")["history"] for i in range(1, last + 1))
        return checkpoints.load_model(f"structured-{last}"), info["report"]
    current, steps_report, teacher_probs = model, [], None
    if last:  # the search's answer is in the checkpoints: a resumed run follows the same schedule
        final, searched = checkpoints.info("structured-1")["final"], checkpoints.info("structured-1")["searched"]
    else:
        if cfg.sparsity > 0 and x is not None:
            current = _sparsity_phase(model, x, y, cfg, recipe, verbose, history)
        final, searched = _final_keep(current, cfg, x, y, measure, macs_before)
    if last:
        current = checkpoints.load_model(f"structured-{last}")
        history.extend(checkpoints.info(f"structured-{i}")["history"] for i in range(1, last + 1))
        steps_report = [checkpoints.info(f"structured-{i}")["step"] for i in range(1, last + 1)]
    fit = x is not None and cfg.epochs > 0
    fit_opts = dict(epochs=cfg.epochs, batch_size=ft.batch_size, learning_rate=ft.learning_rate,
                    lr_schedule=ft.lr_schedule, verbose=verbose)
    out = None
    for i in range(last + 1, cfg.steps + 1):
        spec = _step_spec(cfg, final, i)
        if cfg.target_macs is not None and i == cfg.steps and cfg.steps > 1:
            # the last step meets the target on the model the earlier steps left (rounding compounds)
            from edgecomp.structured import search_keep
            spec = search_keep(current, lambda m: count_macs(m)[1] / macs_before, cfg.target_macs,
                               importance=cfg.importance, data=(x, y) if x is not None else None,
                               ranking=cfg.ranking, round_to=cfg.round_to,
                               what=f"{cfg.target_macs:.1%} of the MACs")[0]
        current, step = prune_channels(current, spec, importance=cfg.importance,
                                       data=(x, y) if x is not None else None, ranking=cfg.ranking,
                                       round_to=cfg.round_to)
        k = None if final is None else 1.0 - (1.0 - final) * i / cfg.steps
        entry = {"stage": f"structured-{i}", "keep": k, "macs": step.macs_after, "params": step.params_after}
        if fit:
            if cfg.distill is not None:
                if teacher_probs is None:
                    teacher_probs = train.predict(model, x)
                h = fit_distilled(current, model, x, y, temperature=cfg.distill.temperature,
                                  weight=cfg.distill.weight, teacher_probs=teacher_probs, seed=seed + 200 + i,
                                  **fit_opts)
            else:
                h = train.fit(current, x, y, seed=seed + 200 + i, **fit_opts)
            entry.update({k2: v[-1] for k2, v in h.items()})
        history.append(entry)
        steps_report.append({"step": i, "keep": k, "macs": step.macs_after, "params": step.params_after})
        out = _report(step, steps_report, searched, macs_before, params_before, current)
        after = channel_widths(current)
        out["channels"] = {n: [w, after.get(n)] for n, w in widths.items()}
        if i == cfg.steps:
            out["macs_fraction"] = out["macs_after"] / max(1, macs_before)   # of the final model, measured
            if cfg.target_latency is not None and measure is not None:
                out["final_measured_ms"] = float(measure(current))
        if checkpoints is not None:
            checkpoints.save_model(f"structured-{i}", current,
                                   info={"history": entry, "step": steps_report[-1], "report": out,
                                         "final": final, "searched": searched})
    return current, out


def _report(step, steps, searched, macs_before, params_before, model) -> dict:
    """The stage's report: the last step's groups (channels before/after, kept whole with reasons),
    MACs and params of the unpruned and final models, each step, and what a target search found."""
    from edgecomp.structured import count_macs
    per_layer, total = count_macs(model)
    last = step.to_dict()
    return {"macs_before": macs_before, "macs_after": total, "params_before": params_before,
            "params_after": model.count_params(), "macs_per_layer": per_layer, "steps": steps,
            "groups": last["groups"], "kept_whole": last["kept_whole"], **searched}


def channel_widths(model) -> dict[str, int]:
    """``{layer name: filters or units}`` of every Conv/Dense-like layer (for before/after tables)."""
    from edgecomp.graph import ModelGraph
    out = {}
    for node in ModelGraph(model).layer_nodes():
        config = node.layer.get_config()
        for key in ("filters", "units"):
            if isinstance(config.get(key), int):
                out[node.path] = config[key]
    return out


def _register():
    from edgecomp.recipe import STAGES
    STAGES.setdefault("structured", Structured)


_register()
