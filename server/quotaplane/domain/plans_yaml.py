"""Reading plans YAML into a plain tree that keeps every number exact, and reporting problems.

PyYAML's safe loader silently turns ``0.05`` into a float, ``010`` into 8, ``1:30`` into
90, ``no`` into False, and keeps the last of two duplicate keys. Here every plain scalar
stays the string the operator wrote (only ``null``/``~``/empty become None), duplicate
keys are reported, and the typed readers below turn strings into ``int`` or ``Decimal``
themselves. The format itself is documented in ``plans.py``; the rules that build plans
from the tree live in ``plans_rules.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal
from typing import NoReturn

import yaml

from quotaplane.domain.errors import InvalidArgument, PlanFileError
from quotaplane.domain.money import parse_money

Tree = None | str | list["Tree"] | dict[str, "Tree"]
KeyPath = tuple[str | int, ...]

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # anchors and aliases can make a small file expand enormously

_NULL_TAG = "tag:yaml.org,2002:null"
_INT_RE = re.compile(r"-?[0-9]+(?:_[0-9]+)*")


class _StringLoader(yaml.SafeLoader):
    """A safe loader whose only implicit type is null: everything else stays a string."""


_StringLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag == _NULL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def format_path(path: KeyPath) -> str:
    """``("plans", "pro", "tiers", 0)`` -> ``plans.pro.tiers[0]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + part
    return text or "(top level)"


class Problems:
    """Collects every problem of one file as ``source:path: message`` lines."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, path: KeyPath, message: str) -> None:
        self.lines.append(f"{self.source}:{format_path(path)}: {message}")

    def add_at(self, location: str, message: str) -> None:
        self.lines.append(f"{self.source}:{location}: {message}")

    def mapping(
        self,
        value: Tree,
        path: KeyPath,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> dict[str, Tree] | None:
        """``value`` if it is a mapping; reports unknown and missing keys (but returns it)."""
        if not isinstance(value, dict):
            self.add(path, f"must be a mapping, got {_describe(value)}")
            return None
        allowed_keys = sorted(allowed)
        for key in value:
            if key not in allowed_keys:
                self.add((*path, key), f"unknown key; allowed: {', '.join(allowed_keys)}")
        for key in required:
            if key not in value:
                self.add((*path, key), "is required")
        return value

    def integer(self, value: Tree, path: KeyPath, *, minimum: int = 0) -> int | None:
        """A whole number written plainly (``1000``, ``1_000``), at least ``minimum``."""
        if not isinstance(value, str) or not _INT_RE.fullmatch(value):
            self.add(path, f"must be a whole number, got {_describe(value)}")
            return None
        number = int(value)
        if number < 0:
            self.add(path, "must not be negative")
        elif number < minimum:
            self.add(path, f"must be at least {minimum}, got {number}")
        else:
            return number
        return None

    def money(self, value: Tree, path: KeyPath, *, max_places: int) -> Decimal | None:
        """An exact non-negative amount with at most ``max_places`` decimal places."""
        if not isinstance(value, str):
            self.add(path, f"must be a decimal number, got {_describe(value)}")
            return None
        try:
            return parse_money(value, max_places=max_places)
        except InvalidArgument as exc:
            self.add(path, exc.message)
            return None

    def choice(self, value: Tree, path: KeyPath, choices: Iterable[str]) -> str | None:
        options = sorted(choices)
        if isinstance(value, str) and value in options:
            return value
        self.add(path, f"must be one of {', '.join(options)}, got {_describe(value)}")
        return None


def read_tree(text: str, problems: Problems) -> Tree:
    """Parse one YAML document into a Tree; duplicate keys are reported to ``problems``.

    A file too large or not YAML at all raises PlanFileError at once: nothing can be
    checked further.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        _fatal(problems, "(file)", f"larger than {MAX_FILE_BYTES:,} bytes")
    try:
        node = yaml.compose(text, Loader=_StringLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        _fatal(problems, where, f"invalid YAML: {exc.problem or exc.context}")
    except (yaml.YAMLError, RecursionError) as exc:
        _fatal(problems, "(file)", f"invalid YAML: {exc}")
    if node is None:
        return None
    return _TreeBuilder(problems).build(node, ())


def _fatal(problems: Problems, location: str, message: str) -> NoReturn:
    problems.add_at(location, message)
    raise PlanFileError(problems.lines)


class _TreeBuilder:
    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.nodes = 0

    def build(self, node: yaml.Node, path: KeyPath) -> Tree:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            if self.nodes == MAX_NODES + 1:
                self.problems.add(path, f"the file expands to more than {MAX_NODES:,} values")
            return None
        if isinstance(node, yaml.ScalarNode):
            return None if node.tag == _NULL_TAG else str(node.value)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        self.problems.add(path, "unsupported YAML node")
        return None

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Tree]:
        result: dict[str, Tree] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _NULL_TAG:
                self.problems.add(path, "keys must be plain names")
                continue
            key = str(key_node.value)
            if key in result:
                self.problems.add(
                    (*path, key), "duplicate key (YAML would silently keep only the last one)"
                )
                continue
            result[key] = self.build(value_node, (*path, key))
        return result


def _describe(value: Tree) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value[:40])
