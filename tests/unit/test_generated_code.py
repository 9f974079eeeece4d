"""The checked-in generated code matches protos/ (regenerate with `make generate`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts/gen_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    return module


def test_checked_in_stubs_are_fresh() -> None:
    gen = _generator()
    assert gen.stale_files(gen.OUT_DIR) == [], "run `make generate` and commit the result"


def test_a_changed_proto_is_detected_as_stale(tmp_path: Path) -> None:
    gen = _generator()
    copy = tmp_path / "v1"
    gen.generate(copy)
    (copy / "quota_pb2.py").write_text("# edited by hand\n")
    assert gen.stale_files(copy) == ["quota_pb2.py"]
