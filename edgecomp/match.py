"""The one matching rule for every per-layer option (pruning rates, sharing bits, channel keep ratios).

A rule's pattern is a glob (``fnmatch``, case-sensitive) that matches a layer's **name** or a
weight's **path**: ``fc1`` and ``fc1/kernel`` both name Dense layer ``fc1``'s kernel,
``block1_*`` every layer whose name starts with ``block1_``, ``*/bias`` every bias. Rules are
tried in order and the first that matches wins.

    >>> matches("fc1", "fc1/kernel")
    True
    >>> first_match({"block*": 0.5, "fc1": 0.9}, "fc1/kernel")
    0.9
"""

from __future__ import annotations

import fnmatch


def layer_name(path: str) -> str:
    """The layer name of a weight path (``"fc1/kernel"`` -> ``"fc1"``); a layer name stays itself."""
    parts = path.split("/")
    return parts[-2] if len(parts) > 1 else parts[0]


def matches(pattern: str, name_or_path: str, weight_path: str | None = None) -> bool:
    """Whether ``pattern`` matches a layer name or weight path.

    Args:
        pattern: a glob.
        name_or_path: a layer name, or a weight path (its layer name is tried too).
        weight_path: optionally the weight path as well, when the first argument is a layer name.
    """
    candidates = {name_or_path, layer_name(name_or_path)}
    if weight_path is not None:
        candidates.update((weight_path, layer_name(weight_path)))
    return any(fnmatch.fnmatchcase(c, pattern) for c in candidates)


def first_match(rules, name_or_path: str, default=None, weight_path: str | None = None):
    """The value of the first rule (``{pattern: value}`` or ``[(pattern, value), ...]``) that matches."""
    items = rules.items() if isinstance(rules, dict) else rules
    for pattern, value in items or ():
        if matches(pattern, name_or_path, weight_path):
            return value
    return default


def unmatched(rules, names) -> list[str]:
    """The patterns in ``rules`` that match none of ``names`` (layer names or weight paths)."""
    names = list(names)
    items = rules.keys() if isinstance(rules, dict) else [p for p, _ in rules]
    return [p for p in items if not any(matches(p, n) for n in names)]
