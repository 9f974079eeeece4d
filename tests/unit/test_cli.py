"""The quotaplane command: plans validation exit codes and messages, docs in sync with the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotaplane.app.runtime import default_plans_path
from quotaplane.cli.main import build_parser, main, settings_markdown

ROOT = Path(__file__).resolve().parents[2]
SEED = """\
plans:
  starter:  {price_per_1000_requests: 0.05, monthly_quota: 10000}
  growth:   {price_per_1000_requests: 0.04, monthly_quota: 50000}
  enterprise: {price_per_1000_requests: 0.03, monthly_quota: 200000}
"""


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "plans.yaml"
    path.write_text(text)
    return str(path)


def test_the_seed_file_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plans", "validate", _write(tmp_path, SEED)]) == 0
    out = capsys.readouterr().out
    assert "OK, 3 plan(s)" in out
    assert all(name in out for name in ("starter", "growth", "enterprise"))


def test_the_packaged_default_plans_validate() -> None:
    assert main(["plans", "validate", str(default_plans_path())]) == 0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "plans:\n  starter: {price_per_1000_requests: -0.05, monthly_quota: 10000}\n",
            "plans.starter.price_per_1000_requests",
        ),
        (
            "plans:\n  starter: {price_per_1000_requests: 0.050000000000000003, "
            "monthly_quota: 10000}\n",
            "plans.starter.price_per_1000_requests",
        ),
        (
            "plans:\n  starter: {price_per_1000_requests: 0.05, monthly_quota: 10000, "
            "colour: red}\n",
            "plans.starter.colour",
        ),
        (
            "plans:\n  starter: {price_per_1000_requests: 0.05, monthly_quota: 10000}\n"
            "  starter: {price_per_1000_requests: 0.04, monthly_quota: 5000}\n",
            "plans.starter",
        ),
        ("plans:\n  starter: {price_per_1000_requests: 0.05}\n", "plans.starter.monthly_quota"),
    ],
    ids=["negative-price", "too-many-places", "unknown-key", "duplicate-plan", "missing-quota"],
)
def test_a_bad_file_exits_1_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str
) -> None:
    path = _write(tmp_path, text)
    assert main(["plans", "validate", path]) == 1
    err = capsys.readouterr().err
    assert f"{path}:{key}:" in err


def test_all_problems_of_a_file_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "plans:\n"
        "  a: {price_per_1000_requests: -1, monthly_quota: 10}\n"
        "  b: {price_per_1000_requests: 0.05, monthly_quota: 10, extra: 1}\n"
    )
    path = _write(tmp_path, text)
    assert main(["plans", "validate", path]) == 1
    err = capsys.readouterr().err
    assert f"{path}:plans.a.price_per_1000_requests:" in err
    assert f"{path}:plans.b.extra:" in err


def test_a_bad_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUOTAPLANE_REDIS_TIMEOUT", "fast")
    assert main(["serve"]) == 2
    assert "QUOTAPLANE_REDIS_TIMEOUT='fast'" in capsys.readouterr().err


def test_readme_settings_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_markdown() in readme, "run `quotaplane settings --markdown` and update README"


def test_readme_documents_every_command() -> None:
    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in commands.items():
        nested = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
        names = [f"{name} {child}" for child in nested[0].choices] if nested else [name]
        for full in names:
            assert f"quotaplane {full}" in readme, f"README lacks `quotaplane {full}`"
