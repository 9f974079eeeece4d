"""Plans files: read a YAML file into an exact tree, then let the domain's rules build plans.

PyYAML's safe loader silently turns ``0.05`` into a float, ``010`` into 8, ``1:30`` into
90, ``no`` into False, and keeps the last of two duplicate keys. Here every plain scalar
stays the string the operator wrote (only ``null``/``~``/empty become None) and duplicate
keys are reported; ``domain/plans/rules.py`` then validates the tree strictly and reports
every problem as ``<file>:<path.to.key>: <message>``. The format is documented in
``domain/plans/model.py``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import NoReturn

import yaml

from quotaplane.domain.errors import PlanFileError
from quotaplane.domain.plans.model import PlanCatalog
from quotaplane.domain.plans.problems import KeyPath, Problems, Tree
from quotaplane.domain.plans.rules import build_catalog


def parse_plans(text: str, source: str) -> PlanCatalog:
    """Validate plans YAML; PlanFileError lists every problem as ``source:path: message``."""
    problems = Problems(source)
    return build_catalog(read_tree(text, problems), problems)


def load_plans(path: str | Path) -> PlanCatalog:
    """Read and validate a plans file; PlanFileError if it cannot be read or is invalid."""
    return read_catalog(Path(path))


def load_default_plans() -> PlanCatalog:
    """The packaged default plans (the seed's starter, growth and enterprise)."""
    text = resources.files("quotaplane").joinpath("default_plans.yaml").read_text("utf-8")
    return parse_plans(text, "default_plans.yaml")


def read_catalog(path: Path) -> PlanCatalog:
    """Read ``path`` and build its catalog; PlanFileError if unreadable or invalid."""
    return parse_plans(read_plans_text(path), str(path))


def read_plans_text(path: str | Path) -> str:
    """The text of a plans file; PlanFileError if it cannot be read."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanFileError([f"{path}:(file): cannot read plans file: {exc}"]) from None


MAX_FILE_BYTES = 1 << 20


MAX_NODES = 100_000  # anchors and aliases can make a small file expand enormously


_NULL_TAG = "tag:yaml.org,2002:null"


class _StringLoader(yaml.SafeLoader):
    """A safe loader whose only implicit type is null: everything else stays a string."""


_StringLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag == _NULL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


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


MAX_OVERRIDE_BYTES = 64 << 10


def parse_override_text(text: str) -> Tree:
    """A tenant override document (YAML or JSON: a partial plan entry) as a Tree;
    PlanFileError if it is not YAML or too large. The plan rules check it once merged."""
    problems = Problems("overrides")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_OVERRIDE_BYTES:
        _fatal(problems, "(document)", f"larger than {MAX_OVERRIDE_BYTES:,} bytes")
    tree = read_tree(text, problems)
    if problems.lines:
        raise PlanFileError(problems.lines)
    return tree
