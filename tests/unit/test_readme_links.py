"""README.md's links stay inside the repository and resolve (a newcomer has only the repo)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _relative_links(markdown: Path) -> list[str]:
    links = _LINK.findall(markdown.read_text())
    return [link for link in links if not re.match(r"[a-z]+:", link)]


def test_readme_links_resolve_inside_the_repository() -> None:
    for document in (ROOT / "README.md", ROOT / "envoy" / "README.md"):
        for link in _relative_links(document):
            target = (document.parent / link).resolve()
            assert target.is_relative_to(ROOT), f"{document.name}: {link} leaves the repository"
            assert target.exists(), f"{document.name}: {link} does not exist"


def test_the_design_contract_is_in_the_repository() -> None:
    assert "docs/design.md" in _relative_links(ROOT / "README.md")
    assert "## Hard invariants" in (ROOT / "docs" / "design.md").read_text()
