"""The recipe: one small, validated config object per compression stage.

``compress(model, data, recipe)`` runs the stages in order: structured (channel) pruning with
fine-tuning, magnitude pruning with the masks held, weight sharing with trained centroids, and
coding into the container. Each stage's config is a frozen dataclass, checked when it is built,
with ``get_config`` / ``from_config``; ``result.settings`` is ``recipe.get_config()``.

Strings (``"iterative:3"``, ``"conv=8,dense=5"``, ``"fc1=0.95,block*=0.5"``) are parsed once, by
:meth:`Recipe.from_options`, which the CLI and ``compress(model, data, **options)`` call.

Every per-layer option (pruning rates, sharing bits, channel keep ratios) uses one matching rule
(:mod:`edgecomp.match`): a glob matches the layer's name or the weight's path, first rule wins.

Example:
    >>> recipe = Recipe.from_options(rate=0.95, method="deep", criterion="global",
    ...                              schedule="iterative:3", bits="conv=6,dense=4,fc1=3")
    >>> recipe.pruning.schedule
    Iterative(steps=3)
    >>> Recipe.from_config(recipe.get_config()) == recipe
    True
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from edgecomp.errors import EdgecompError
from edgecomp.pruning_config import (BlockMagnitude, Config, Magnitude, OneShot, criterion_from, rules,
                                     schedule_from, whole_number)

METHODS = ("seed", "deep")
CODERS = ("auto", "huffman", "deflate", "fixed")


def _rate(value) -> float:
    from edgecomp.pruning import check_rate
    return check_rate(value)


def _bits(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
        raise EdgecompError(f"weight-sharing bits must be in 1..8, got {value!r}", fix="use e.g. --bits conv=8,dense=5")
    return value


def _positive_float(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise EdgecompError(f"{name} must be a number > 0, got {value}", fix=f"pass a positive {name}")
    return value


@dataclasses.dataclass(frozen=True)
class FineTune(Config):
    """How every fine-tuning run trains: epochs (per pruning step), batch size, Adam's rate and its schedule."""

    epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"

    def __post_init__(self):
        from edgecomp.train import LR_SCHEDULES
        whole_number("fine-tune epochs", self.epochs)
        whole_number("batch size", self.batch_size, 1)
        object.__setattr__(self, "learning_rate", _positive_float("learning rate", self.learning_rate))
        if self.lr_schedule not in LR_SCHEDULES:
            raise EdgecompError(f"unknown learning-rate schedule '{self.lr_schedule}'",
                                fix=f"use one of: {', '.join(LR_SCHEDULES)}")


@dataclasses.dataclass(frozen=True)
class Pruning(Config):
    """Magnitude pruning: the fraction ``rate`` of weights goes, chosen by ``criterion``, on ``schedule``.

    ``layer_rates`` are ``(glob, rate)`` rules, ``layer_criteria`` ``(glob, criterion)`` rules (e.g.
    ``{"fc*": "block:16x1"}``); ``skip_first`` leaves the first Conv/Dense dense. ``policy``
    restricts pruning to what a runtime's fast path takes (:mod:`edgecomp.pruning_policy`:
    ``"xnnpack-sparse"`` prunes only 1x1 convolutions, for XNNPACK's sparse path on ARM).
    """

    rate: float = 0.8
    criterion: Magnitude | BlockMagnitude = Magnitude()
    schedule: object = OneShot()
    layer_rates: tuple = ()
    layer_criteria: tuple = ()
    skip_first: bool = True
    policy: object = None

    def __post_init__(self):
        from edgecomp.pruning_policy import policy_from
        object.__setattr__(self, "policy", policy_from(self.policy))
        object.__setattr__(self, "rate", _rate(self.rate))
        object.__setattr__(self, "criterion", criterion_from(self.criterion))
        object.__setattr__(self, "schedule", schedule_from(self.schedule))
        object.__setattr__(self, "layer_rates", rules(self.layer_rates, "per-layer rate", _rate))
        object.__setattr__(self, "layer_criteria", rules(self.layer_criteria, "per-layer criterion", criterion_from))
        object.__setattr__(self, "skip_first", bool(self.skip_first))

    def get_config(self) -> dict:
        """As every config's; ``policy`` only when set, so a recipe without one reads as before."""
        out = super().get_config()
        if out.get("policy") is None:
            out.pop("policy", None)
        return out


@dataclasses.dataclass(frozen=True)
class Sharing(Config):
    """k-means weight sharing: ``bits`` per layer kind (``conv``, ``dense``) or glob rule, k-means
    ``init``, and ``epochs`` of centroid fine-tuning (``learning_rate``)."""

    bits: tuple = (("conv", 8), ("dense", 5))
    init: str = "linear"
    epochs: int = 1
    learning_rate: float = 1e-4

    def __post_init__(self):
        from edgecomp.weight_sharing import INITS
        found = rules(self.bits, "bits", _bits)
        kinds = {"conv": 8, "dense": 5, **{p: b for p, b in found if p in ("conv", "dense")}}
        seen: set = set()   # the first rule for a pattern wins, as in matching
        globs = [(p, b) for p, b in found if p not in kinds and not (p in seen or seen.add(p))]
        object.__setattr__(self, "bits", tuple(kinds.items()) + tuple(globs))
        if self.init not in INITS:
            raise EdgecompError(f"unknown k-means initialisation '{self.init}'", fix=f"use one of: {', '.join(INITS)}")
        whole_number("centroid epochs", self.epochs)
        object.__setattr__(self, "learning_rate", _positive_float("centroid learning rate", self.learning_rate))

    @property
    def bits_map(self) -> dict:
        return dict(self.bits)


@dataclasses.dataclass(frozen=True)
class Coding(Config):
    """How the kept weights are stored: ``seed`` (int8 values, uint8 relative index) or ``deep``
    (centroid indices and index gaps of ``index_bits``, entropy-coded by ``coder``). ``small``
    stores the other tensors (BatchNorm, biases, uncoded kernels; ``edgecomp.store.SMALL_POLICIES``):
    ``fold`` (default) keeps each BatchNorm as its scale and shift, folded into an uncoded kernel
    before it, the same function to float rounding; ``raw`` as float32; ``fp16`` / ``compact``
    round them (smaller, but outside the fp32 parity gate on BN-heavy nets)."""

    method: str = "seed"
    index_bits: int | None = None
    coder: str = "auto"
    small: str = "fold"

    def get_config(self) -> dict:
        """As every config's; ``small`` only when not the default, so older recipes read the same."""
        out = super().get_config()
        if out.get("small") == "fold":
            out.pop("small")
        return out

    def __post_init__(self):
        from edgecomp.store import SMALL_POLICIES
        if self.small not in SMALL_POLICIES:
            raise EdgecompError(f"unknown small-tensor storage '{self.small}'",
                                fix=f"use one of: {', '.join(SMALL_POLICIES)}")
        if self.method not in METHODS:
            raise EdgecompError(f"unknown compression method '{self.method}'", fix=f"use one of: {', '.join(METHODS)}")
        if self.index_bits is not None and (isinstance(self.index_bits, bool) or not isinstance(self.index_bits, int)
                                            or not 1 <= self.index_bits <= 8):
            raise EdgecompError(f"--index-bits must be in 1..8, got {self.index_bits!r}", fix="e.g. --index-bits 5")
        if self.coder not in CODERS:
            raise EdgecompError(f"unknown entropy coder '{self.coder}'", fix=f"use one of: {', '.join(CODERS)}")


from edgecomp.distribute import Distribute  # noqa: E402  (how the training stages are spread; no Keras)
from edgecomp.qat import QAT  # noqa: E402  (the QAT stage's config; imports no Keras)

#: Stage configs by field name, for :meth:`Recipe.from_config`; later stages register here.
STAGES: dict[str, type] = {"pruning": Pruning, "fine_tune": FineTune, "sharing": Sharing, "qat": QAT,
                           "coding": Coding, "distribute": Distribute}


@dataclasses.dataclass(frozen=True)
class Recipe(Config):
    """Every stage's config; ``sharing`` is None for the seed's method.

    Build it from parsed objects, or from the CLI's strings with :meth:`from_options`.
    """

    pruning: Pruning = Pruning()
    fine_tune: FineTune = FineTune()
    sharing: Sharing | None = None
    coding: Coding = Coding()
    structured: object = None
    qat: QAT | None = None
    seed: int = 0
    #: Where every training stage runs (not a stage: the result is the single-process one).
    distribute: Distribute = Distribute()
    ORDER: ClassVar[tuple] = ("structured", "pruning", "sharing", "qat", "coding")

    def __post_init__(self):
        if self.structured is not None:
            import edgecomp.structured_stage  # noqa: F401  (registers the stage's config class)
        for name, cls in STAGES.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, cls.from_config(value))
            elif value is not None and not isinstance(value, cls):
                raise EdgecompError(f"recipe stage {name} must be a {cls.__name__}, got {type(value).__name__}",
                                    fix=f"pass edgecomp.recipe.{cls.__name__}(...)")
        if self.coding.method == "deep" and self.sharing is None:
            object.__setattr__(self, "sharing", Sharing())
        if self.coding.method == "seed" and self.sharing is not None:
            raise EdgecompError("the seed's method stores int8 values, not shared weights",
                                fix="use method deep with weight sharing, or leave sharing out")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise EdgecompError(f"seed must be a whole number, got {self.seed!r}", fix="e.g. --seed 0")

    def get_config(self) -> dict:
        """As every config's; ``distribute`` only when set, so a one-process recipe (and its
        container, and a run's fingerprint) reads as before distribution existed."""
        config = super().get_config()
        if not self.distribute.enabled and self.distribute == Distribute():
            config.pop("distribute")
        return config

    @property
    def method(self) -> str:
        return self.coding.method

    @property
    def stages(self) -> list[str]:
        """The stages this recipe runs, in order."""
        return [s for s in self.ORDER if s in ("pruning", "coding") or getattr(self, s) is not None]

    def describe(self) -> str:
        """A short human summary, e.g. ``channels 0.35 in 2 steps, distilled; deep 0.8 filter, bits conv=8,dense=5``."""
        parts = []
        s = self.structured
        if s is not None:
            target = (f"channels {s.keep:g}" if s.keep is not None else f"MACs {s.target_macs:.0%}"
                      if s.target_macs is not None else f"{s.target_latency:g} ms on {s.profile}"
                      if s.target_latency is not None else "channels by layer")
            parts.append(target + (f" in {s.steps} steps" if s.steps > 1 else "") + (", distilled" if s.distill else ""))
        p = self.pruning
        prune = f"{self.method} {p.rate:g} {p.criterion}" + ("" if str(p.schedule) == "oneshot" else f" {p.schedule}")
        if p.rate == 0 and not p.layer_rates and self.sharing is None:
            prune = "int8 weights, no weight pruning"
        if self.sharing is not None:
            prune += ", bits " + ",".join(f"{k}={v}" for k, v in self.sharing.bits)
        if self.qat is not None:
            prune += f"; QAT {self.qat.epochs} epoch" + ("s" if self.qat.epochs > 1 else "")
        return "; ".join(parts + [prune])

    @classmethod
    def from_config(cls, config: dict) -> "Recipe":
        config = dict(config)
        if config.get("structured") is not None:
            import edgecomp.structured_stage  # noqa: F401  (registers the stage)
        unknown = sorted(set(config) - set(STAGES) - {"seed", "structured"})
        if unknown:
            raise EdgecompError(f"Recipe has no setting(s) {', '.join(unknown)}",
                                fix=f"use: {', '.join(sorted({*STAGES, 'structured', 'seed'}))}")
        return super().from_config({k: (v if k == "seed" or v is None else STAGES[k].from_config(v))
                                    for k, v in config.items()})

    @classmethod
    def from_options(cls, recipe: "Recipe | None" = None, **options) -> "Recipe":
        """A recipe from flat options (strings parsed here, once), over ``recipe`` or the defaults.

        Options: ``rate``, ``method``, ``criterion`` (``filter``/``layer``/``global``/``block[:RxC]``
        or an object), ``layer_rates`` (``"fc1=0.9"`` or a dict), ``schedule`` (``"iterative:3"`` or
        an object), ``skip_first``, ``fine_tune_epochs``, ``batch_size``, ``learning_rate``,
        ``lr_schedule``, ``bits`` (``"conv=8,dense=5"``, an int or a dict), ``init``,
        ``centroid_epochs``, ``index_bits``, ``coder``, ``seed``, the structured stage's
        (:data:`STRUCTURED_OPTIONS`) and QAT's (``qat_epochs``, ``qat_learning_rate``,
        ``qat_weight_bits``, ``qat_distill``) and where training runs (``distribute``: ``none``,
        ``mirrored`` or ``multi-worker``; ``cpu_devices``, ``peer_timeout``, ``check_masks``).
        """
        from edgecomp.pruning import parse_rates
        from edgecomp.weight_sharing import parse_bits

        base = recipe or cls()
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise EdgecompError(f"unknown compression option(s): {', '.join(unknown)}",
                                fix=f"use: {', '.join(OPTIONS)}")
        o = {k: v for k, v in options.items() if v is not None or k in ("index_bits",)}
        if isinstance(o.get("layer_rates"), str):
            o["layer_rates"] = parse_rates(o["layer_rates"])
        method = o.get("method", base.method)
        deep_only = [k for k in ("bits", *_SHARING, *_CODING) if k in options and options[k] is not None]
        if method != "deep" and deep_only:
            flag = "--" + deep_only[0].replace("_", "-")
            raise EdgecompError(f"{flag} sets weight sharing or entropy coding, which only --method deep does",
                                fix=f"add --method deep, or drop {flag}")
        pruning = base.pruning.replace(**{f: o[k] for k, f in _PRUNING.items() if k in o})
        fine_tune = base.fine_tune.replace(**{f: o[k] for k, f in _FINE_TUNE.items() if k in o})
        small = o.get("small_tensors", base.coding.small)
        coding = (Coding(method, **{f: o.get(k, getattr(base.coding, f)) for k, f in _CODING.items()}, small=small)
                  if method == "deep" else Coding(method, small=small))
        sharing = None
        if method == "deep":
            sharing = base.sharing or Sharing()
            if "bits" in o:
                sharing = sharing.replace(bits=tuple(parse_bits(o["bits"]).items()))
            sharing = sharing.replace(**{f: o[k] for k, f in _SHARING.items() if k in o})
        qat = base.qat
        if any(o.get(k) is not None for k in _QAT):
            if o.get("qat_epochs") == 0:
                qat = None
            else:
                qat = (qat or QAT()).replace(**{f: o[k] for k, f in _QAT.items() if k in o})
        structured = base.structured
        picked = {k: o[k] for k in STRUCTURED_OPTIONS if k in o}
        if picked:
            from edgecomp.structured_stage import structured_from_options
            structured = structured_from_options(structured, **picked)
        dist = base.distribute
        if any(k in o for k in _DISTRIBUTE):
            dist = Distribute(**{**dist.get_config(), **{f: o[k] for k, f in _DISTRIBUTE.items() if k in o}})
        return cls(pruning=pruning, fine_tune=fine_tune, sharing=sharing, coding=coding,
                   structured=structured, qat=qat, seed=o.get("seed", base.seed), distribute=dist)


_PRUNING = {"rate": "rate", "criterion": "criterion", "schedule": "schedule", "layer_rates": "layer_rates",
            "layer_criteria": "layer_criteria", "skip_first": "skip_first", "policy": "policy"}
_FINE_TUNE = {"fine_tune_epochs": "epochs", "batch_size": "batch_size", "learning_rate": "learning_rate",
              "lr_schedule": "lr_schedule"}
_SHARING = {"init": "init", "centroid_epochs": "epochs"}
_CODING = {"index_bits": "index_bits", "coder": "coder"}
#: The QAT stage's options (``qat_epochs=0`` drops the stage).
_QAT = {"qat_epochs": "epochs", "qat_learning_rate": "learning_rate", "qat_weight_bits": "weight_bits",
        "qat_distill": "distill"}
#: Where the training stages run (:class:`edgecomp.distribute.Distribute`).
_DISTRIBUTE = {"distribute": "strategy", "cpu_devices": "cpu_devices", "peer_timeout": "peer_timeout",
               "check_masks": "check_masks"}
#: The structured stage's flat options (see :mod:`edgecomp.structured_stage`).
STRUCTURED_OPTIONS = ("channels", "layer_channels", "target_macs", "target_latency", "latency_profile",
                      "importance", "ranking", "round_to", "structured_steps", "structured_epochs", "distill",
                      "bn_sparsity")
OPTIONS = (*_PRUNING, "method", *_FINE_TUNE, "bits", *_SHARING, *_CODING, "small_tensors", "seed", *STRUCTURED_OPTIONS, *_QAT,
           *_DISTRIBUTE)
