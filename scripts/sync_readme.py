#!/usr/bin/env python3
"""Rewrite README.md's settings table from the settings declarations (quotaplane.config_table).

tests/unit/test_cli.py fails while the README's table differs from the generated one.
"""

from __future__ import annotations

from pathlib import Path

from quotaplane.cli.main import settings_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
HEADER = "| variable | flag | default | meaning |"


def main() -> None:
    lines = README.read_text().splitlines()
    start = lines.index(HEADER)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[start:end] = settings_markdown().splitlines()
    README.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
