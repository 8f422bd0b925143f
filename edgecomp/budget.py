"""Budgeted compression: the smallest model within an accuracy budget, layer by layer.

From the sensitivity curves (:mod:`edgecomp.sensitivity`) and joint checks on held-out data,
a plan gives each layer, biggest first, the highest pruning rate and the fewest bits whose
drop, together with the choices already made, still fits the budget. The plan is then applied (iterative pruning with fine-tuning, weight sharing with
trained centroids), checked on held-out data (never the test set), and backed off where the
budget is broken: the layers that lost most get one notch less, and the search tries again.

    >>> result, log = compress_within_budget(model, ds, recipe, max_accuracy_drop=1.0)
"""

from __future__ import annotations

import numpy as np

from edgecomp import train
from edgecomp.errors import EdgecompError


def plan(table: dict, max_drop: float, *, margin: float = 0.5) -> dict:
    """Per-layer rates and bits from the curves: biggest layers first, each taking the most
    aggressive setting whose drop fits what remains of ``margin * max_drop`` (points).

    The margin keeps room for the interaction of layers that single-layer curves can't see.
    """
    budget = margin * max_drop
    rates, bits = {}, {}
    for row in sorted(table["layers"], key=lambda r: -r["params"]):
        name = row["name"]
        ok = [float(r) for r, d in row["prune"].items() if d <= budget]
        rates[name] = max(ok) if ok else 0.0
        spent = max(0.0, row["prune"].get(str(rates[name]), 0.0)) if rates[name] else 0.0
        budget -= spent
        okb = [int(b) for b, d in row["bits"].items() if d <= max(budget, 0.0) + 1e-9]
        bits[name] = min(okb) if okb else 8
        budget -= max(0.0, row["bits"].get(str(bits[name]), 0.0))
    return {"rates": rates, "bits": bits}


def plan_jointly(model, table: dict, x_val, y_val, allowance: float) -> dict:
    """Greedy plan measured jointly, biggest layers first: each layer takes the most aggressive
    rate (then the fewest bits) whose drop *with every choice made so far applied together*
    stays within ``allowance`` points, without fine-tuning. Single-layer curves only skip
    settings that already break the allowance alone (they can't see layer interactions).
    The model's weights are restored afterwards.
    """
    from edgecomp.pruning import filter_mask, prunable_weights
    from edgecomp.weight_sharing import share_tensor

    found = {var.path: (var, axes) for var, axes in prunable_weights(model, skip_first=False)}
    original = {p: var.numpy().copy() for p, (var, _) in found.items()}
    base = train.evaluate(model, x_val, y_val)
    rows = sorted(table["layers"], key=lambda r: -r["params"])
    rates = {r["name"]: 0.0 for r in rows}
    bits = {r["name"]: 8 for r in rows}

    def apply(name, rate, b):
        var, axes = found[name]
        w = original[name] * filter_mask(original[name], rate, axes) if rate else original[name]
        var.assign(share_tensor(w, b).weights() if b < 8 else w)

    def drop():
        return 100 * (base - train.evaluate(model, x_val, y_val))

    try:
        for row in rows:
            name = row["name"]
            for r in sorted((float(k) for k, d in row["prune"].items() if d <= allowance), reverse=True):
                apply(name, r, 8)
                if drop() <= allowance:
                    rates[name] = r
                    break
            apply(name, rates[name], 8)
        for row in rows:
            name = row["name"]
            for b in sorted(int(k) for k, d in row["bits"].items() if d <= allowance and int(k) < 8):
                apply(name, rates[name], b)
                if drop() <= allowance:
                    bits[name] = b
                    break
            apply(name, rates[name], bits[name])
    finally:
        for name, (var, _) in found.items():
            var.assign(original[name])
    return {"rates": rates, "bits": bits}


def estimated_bytes(p: dict, table: dict, gap_bits: float = 4.0) -> float:
    """Rough container size of a plan: kept weights x (index bits + gap bits) / 8."""
    total = 0.0
    for row in table["layers"]:
        kept = row["params"] * (1 - p["rates"].get(row["name"], 0.0))
        total += kept * (p["bits"].get(row["name"], 8) + gap_bits) / 8
    return total


def plan_for_ratio(table: dict, target_ratio: float, fp32_bytes: int) -> dict:
    """The least aggressive plan (smallest per-layer drop threshold) whose estimated size
    reaches ``target_ratio`` against ``fp32_bytes``."""
    if target_ratio <= 1:
        raise EdgecompError(f"--target-ratio must be > 1, got {target_ratio}", fix="e.g. --target-ratio 40")
    want = fp32_bytes / target_ratio
    lo, hi = 0.0, 100.0
    best = plan(table, hi, margin=1.0)
    for _ in range(30):
        mid = (lo + hi) / 2
        p = plan(table, mid, margin=1.0)
        if estimated_bytes(p, table) <= want:
            best, hi = p, mid
        else:
            lo = mid
    return best


def back_off(p: dict, table: dict, drops: dict | None = None) -> dict:
    """One notch less for the most aggressive half of the layers (by their curve drop)."""
    rates_axis = sorted(float(r) for r in table["rates"])
    bits_axis = sorted(int(b) for b in table["bits"])
    by_name = {r["name"]: r for r in table["layers"]}
    worst = sorted(p["rates"], key=lambda n: -by_name[n]["prune"].get(str(p["rates"][n]), 0.0))
    new = {"rates": dict(p["rates"]), "bits": dict(p["bits"])}
    for name in worst[: max(1, len(worst) // 2)]:
        lower = [r for r in rates_axis if r < new["rates"][name]]
        new["rates"][name] = lower[-1] if lower else 0.0
        higher = [b for b in bits_axis if b > new["bits"][name]]
        new["bits"][name] = higher[0] if higher else new["bits"][name]
    return new


def planned_recipe(recipe, p: dict):
    """``recipe`` with a plan's per-layer rates and bits as exact-path rules, after the recipe's
    own rules (which stay pinned: the first matching rule wins)."""
    pruning = recipe.pruning.replace(layer_rates=recipe.pruning.layer_rates + tuple(p["rates"].items()))
    if recipe.sharing is None:  # the seed's method stores int8 values: only the rates apply
        return recipe.replace(pruning=pruning)
    sharing = recipe.sharing.replace(bits=recipe.sharing.bits + tuple(p["bits"].items()))
    return recipe.replace(pruning=pruning, sharing=sharing)


#: The search's recipe when none is given: deep, two pruning steps, every layer planned.
DEFAULT_OPTIONS = {"method": "deep", "schedule": "iterative:2", "skip_first": False}


def default_recipe():
    """The recipe of :data:`DEFAULT_OPTIONS` (the CLI's flags go over it in budget mode)."""
    from edgecomp.recipe import Recipe
    return Recipe.from_options(**DEFAULT_OPTIONS)


def compress_within_budget(model, data, recipe=None, *, max_accuracy_drop: float | None = 1.0,
                           target_ratio: float | None = None, val_size: int = 2000, attempts: int = 3,
                           verbose: int = 1, sensitivity: dict | None = None, slack: float = 2.0, measure=None,
                           **options):
    """Search per-layer rates and bits for the smallest container within the budget.

    Args:
        model: the trained Keras model (restored to its weights before each attempt).
        data: a Dataset or ``(x, y)``; the last ``val_size`` training samples are held out for the
            sensitivity curves and the budget checks, the rest fine-tune. The model should not have
            been trained on them: there its accuracy is training accuracy, which fine-tuning on the
            rest forgets, so every plan would look worse than it is.
        recipe: the :class:`~edgecomp.recipe.Recipe` every attempt runs (its schedule, fine-tuning,
            coding, seed, ...); the search adds per-layer rate and bits rules after its own.
            None: :data:`DEFAULT_OPTIONS` (with ``**options`` over them).
        max_accuracy_drop: points of held-out accuracy the result may lose.
        target_ratio: aim at this size ratio against fp32 instead.
        measure: ``Keras model -> ms`` for a structured latency target (see :func:`edgecomp.compress`).

    Returns:
        ``(CompressedModel, log)``: the result's ``recipe`` is the recipe found, its ``search`` the
        budget and the log (per attempt: the plan, held-out accuracy, bytes, within the budget or not).

    Example:
        >>> result, log = compress_within_budget(model, ds, Recipe.from_options(method="deep"),
        ...                                      max_accuracy_drop=1.0)
        >>> result.recipe.pruning.layer_rates          # the plan, as rules
    """
    from edgecomp.pipeline import compress
    from edgecomp.recipe import Recipe
    from edgecomp.sensitivity import analyze

    if isinstance(recipe, dict):
        recipe = Recipe.from_config(recipe)
    if recipe is None:
        recipe = Recipe.from_options(default_recipe(), **options)
    elif options:
        recipe = Recipe.from_options(recipe, **options)
    if max_accuracy_drop is None and target_ratio is None:
        raise EdgecompError("the budget search needs --max-accuracy-drop or --target-ratio", fix="pass one")
    if max_accuracy_drop is not None and max_accuracy_drop <= 0:
        raise EdgecompError(f"--max-accuracy-drop must be > 0, got {max_accuracy_drop}", fix="e.g. 1.0 (points)")
    x, y = (data.x_train, data.y_train) if hasattr(data, "x_train") else data
    if len(x) <= val_size:
        raise EdgecompError(f"the budget search holds out {val_size} training samples but there are {len(x)}",
                            fix="use more training data or a smaller --val-size")
    x_fit, y_fit, x_val, y_val = x[:-val_size], y[:-val_size], x[-val_size:], y[-val_size:]
    base_val = train.evaluate(model, x_val, y_val)
    table = sensitivity or analyze(model, x_val, y_val, progress=bool(verbose))
    original = [w.copy() for w in model.get_weights()]
    if target_ratio is not None:
        fp32 = 4 * sum(int(np.prod(w.shape)) for w in original)
        p = plan_for_ratio(table, target_ratio, fp32)
        max_accuracy_drop = max_accuracy_drop if max_accuracy_drop is not None else float("inf")
    else:
        # Without fine-tuning the joint drop may exceed the budget by ``slack``: fine-tuning recovers it.
        p = plan_jointly(model, table, x_val, y_val, slack * max_accuracy_drop)
    log, best = [], None
    for attempt in range(1, attempts + 1):
        model.set_weights(original)
        result = compress(model, (x_fit, y_fit), planned_recipe(recipe, p), verbose=verbose, measure=measure)
        val = train.evaluate(result.decode(), x_val, y_val)
        drop = 100 * (base_val - val)
        kept = drop <= max_accuracy_drop
        log.append({"attempt": attempt, "plan": p, "val_accuracy": val, "val_drop_points": drop,
                    "bytes": result.bytes, "within_budget": kept})
        if verbose:
            print(f"[budget] attempt {attempt}: held-out drop {drop:.2f} points, {result.bytes:,} B, "
                  f"{'kept' if kept else 'over budget: backing off'}", flush=True)
        if kept:
            best = result
            break
        p = back_off(p, table)
    if best is None:
        raise EdgecompError(f"no plan kept the accuracy drop within {max_accuracy_drop} points in {attempts} attempts",
                            fix="allow a larger --max-accuracy-drop, more --fine-tune-epochs, or more attempts")
    best.search = {"max_accuracy_drop": max_accuracy_drop, "baseline_val_accuracy": base_val,
                   "attempts": log, "sensitivity": table}
    return best, log
