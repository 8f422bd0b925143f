"""The one rule for per-layer options given by glob: a pattern matches a layer name or a weight path.

Pruning rates (``--layer-rates``), sharing bits (``--bits``), per-layer criteria and channel keep
ratios (``--channels``) all use it. A pattern is an ``fnmatch`` glob (case-sensitive) tried
against the layer's name and its weight's path: ``fc1`` and ``fc1/kernel`` both name Dense layer
``fc1``'s kernel, ``block1_*`` every layer whose name starts with ``block1_``, ``*/bias`` every
bias. Rules are tried in order and the first that matches wins.

    >>> matches("block1_*", "block1_conv1")
    True
    >>> matches("*/bias", "fc1", "fc1/bias")
    True
    >>> rule_value({"block*": 0.5, "fc1": 0.9}, "fc1/kernel")
    0.9
"""

from __future__ import annotations

import fnmatch

__all__ = ["matches", "rule_value", "unmatched", "layer_name"]


def layer_name(path: str) -> str:
    """The layer name of a weight path (``"fc1/kernel"`` -> ``"fc1"``); a bare name stays itself."""
    parts = path.split("/")
    return parts[-2] if len(parts) > 1 else parts[0]


def matches(pattern: str, layer_name_or_path: str, weight_path: str | None = None) -> bool:
    """True when the glob ``pattern`` matches the layer's name or the weight's path (case-sensitive).

    Args:
        pattern: an ``fnmatch`` glob (``*``, ``?``, ``[...]``), e.g. ``"block1_*"`` or ``"fc1/kernel"``.
        layer_name_or_path: the layer's name (``layer.name``), or a weight path, whose layer name is
            then tried too.
        weight_path: one of its weights' paths (``variable.path``, e.g. ``"fc1/kernel"``), if any.

    Example:
        >>> matches("fc?", "fc1"), matches("conv*", "fc1", "fc1/kernel"), matches("fc1", "fc1/kernel")
        (True, False, True)
    """
    names = [layer_name_or_path]
    if "/" in layer_name_or_path:
        names.append(layer_name(layer_name_or_path))
    if weight_path is not None:
        names.append(weight_path)
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


def rule_value(rules, layer_name_or_path: str, default=None):
    """The value of the first rule (``{pattern: value}`` or ``[(pattern, value), ...]``) that matches.

    Example:
        >>> rule_value([("fc*", 3)], "fc1/kernel"), rule_value({"conv*": 3}, "fc1", default=8)
        (3, 8)
    """
    for pattern, value in (rules.items() if isinstance(rules, dict) else rules or ()):
        if matches(pattern, layer_name_or_path):
            return value
    return default


def unmatched(rules, names) -> list[str]:
    """The patterns of ``rules`` that match none of ``names`` (layer names or weight paths)."""
    names = list(names)
    patterns = rules.keys() if isinstance(rules, dict) else [p for p, _ in rules]
    return [p for p in patterns if not any(matches(p, n) for n in names)]
