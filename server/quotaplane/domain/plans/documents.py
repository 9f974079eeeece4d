"""Plans documents as trees: their canonical digest, and merging a partial document over one.

A plans document (the YAML file, or one plan entry of it) is a ``Tree`` of strings
(``problems.py``). Two documents that say the same thing have the same ``digest`` whatever
their formatting, key order or comments, so applying an unchanged file stores no new version.

A tenant override is a partial plan entry merged over the plan's entry by JSON Merge Patch
(RFC 7396) rules: a mapping merges key by key, ``null`` removes a key, anything else (a
scalar, a list such as ``tiers``) replaces what was there; a ``charge`` that names its
``model`` replaces the plan's charge whole. The merged entry is then built by
the same rules as a plan of the file, so any key a plan may have works in an override.
"""

from __future__ import annotations

import hashlib

from quotaplane.domain.plans.problems import Tree

# The seed shorthand (``{price_per_1000_requests, monthly_quota}``) and what it stands for.
SEED_KEYS = frozenset({"price_per_1000_requests", "monthly_quota"})


def canonical(tree: Tree) -> str:
    """One text per meaning: mappings in key order, every scalar quoted."""
    if tree is None:
        return "~"
    if isinstance(tree, str):
        return repr(tree)
    if isinstance(tree, list):
        return "[" + ",".join(canonical(item) for item in tree) + "]"
    items = sorted(tree.items())
    return "{" + ",".join(f"{key!r}:{canonical(value)}" for key, value in items) + "}"


def digest(tree: Tree) -> str:
    """SHA-256 (hex) of the canonical text."""
    return hashlib.sha256(canonical(tree).encode("utf-8")).hexdigest()


def merge_patch(base: Tree, patch: Tree) -> Tree:
    """``patch`` merged over ``base`` by RFC 7396 (neither is changed), with one rule more: a
    mapping that names its ``model`` (a charge) replaces the one under it whole, since the
    keys of one charge model mean nothing to another."""
    if not isinstance(patch, dict):
        return patch
    if "model" in patch:
        base = None
    merged: dict[str, Tree] = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def is_seed_entry(entry: Tree) -> bool:
    return isinstance(entry, dict) and any(key in entry for key in SEED_KEYS)


def expand_seed_entry(entry: dict[str, Tree]) -> dict[str, Tree]:
    """A seed shorthand entry written in the full format, so an override may reach into
    ``metrics`` (``monthly_quota`` -> ``metrics.requests.limits.month``)."""
    expanded = {key: value for key, value in entry.items() if key not in SEED_KEYS}
    requests: dict[str, Tree] = {}
    if "price_per_1000_requests" in entry:
        requests["charge"] = {
            "model": "package",
            "package_size": "1000",
            "package_price": entry["price_per_1000_requests"],
        }
    if "monthly_quota" in entry:
        requests["limits"] = {"month": entry["monthly_quota"]}
    expanded["metrics"] = {"requests": requests}
    return expanded


def changed_paths(before: Tree, after: Tree, prefix: str = "") -> list[str]:
    """The dotted key paths where ``after`` differs from ``before`` (mappings compared key by
    key; anything else as a whole)."""
    if before is None and isinstance(after, dict):
        before = {}
    if after is None and isinstance(before, dict):
        after = {}
    if isinstance(before, dict) and isinstance(after, dict):
        paths: list[str] = []
        for key in sorted(set(before) | set(after)):
            child = f"{prefix}.{key}" if prefix else key
            paths += changed_paths(before.get(key), after.get(key), child)
        return paths
    return [] if canonical(before) == canonical(after) else [prefix or "(all)"]
