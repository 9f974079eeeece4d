#!/usr/bin/env python3
"""Generate the Python code for protos/ into clients/quotaplane_client/v1/ (the one way to do it).

protoc names generated modules after the proto path (`quotaplane.v1.quota_pb2`), which would
collide with the server package `quotaplane`. The code is therefore generated into a scratch
directory and its import lines are rewritten to `quotaplane_client.v1` (only import lines:
the serialized descriptors keep their original file names, which reflection shows).

    python scripts/gen_protos.py          # (re)generate
    python scripts/gen_protos.py --check  # exit 1 and list the files that are stale
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_PACKAGE = Path("quotaplane/v1")
OUT_DIR = ROOT / "clients/quotaplane_client/v1"
INIT_TEXT = '"""Generated protobuf and gRPC code for quotaplane.v1 (scripts/gen_protos.py)."""\n'

_PY_IMPORT = re.compile(r"^(from|import) quotaplane\.v1\b", re.MULTILINE)
_PYI_NAME = re.compile(r"\bquotaplane\.v1\b")


def _protoc_include() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).parent / "_proto")


def _plugin(name: str) -> str:
    """The mypy-protobuf plugin installed beside this interpreter (PATH may not have it)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install the dev extras (pip install -e '.[dev]')")
    return f"--plugin={name}={found}"


def _run_protoc(out: Path) -> None:
    protos = sorted(
        str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PROTO_PACKAGE).glob("*.proto")
    )
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{_protoc_include()}",
        _plugin("protoc-gen-mypy"),
        _plugin("protoc-gen-mypy_grpc"),
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def _rewrite(path: Path) -> None:
    text = path.read_text()
    if path.suffix == ".pyi":
        text = _PYI_NAME.sub("quotaplane_client.v1", text)
    else:
        text = _PY_IMPORT.sub(lambda m: f"{m.group(1)} quotaplane_client.v1", text)
    path.write_text(text)


def generate(target: Path) -> None:
    """Generate every proto of quotaplane.v1 into `target` (created, previous content replaced)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        _run_protoc(out)
        generated = out / PROTO_PACKAGE
        for path in generated.iterdir():
            _rewrite(path)
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob("*_pb2*"):
            stale.unlink()
        for path in sorted(generated.iterdir()):
            shutil.copy2(path, target / path.name)
        (target / "__init__.py").write_text(INIT_TEXT)


def stale_files(target: Path) -> list[str]:
    """Names of generated files in `target` that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch) / "v1"
        generate(fresh)
        names = {p.name for p in fresh.iterdir()} | {p.name for p in target.glob("*_pb2*")}
        names.add("__init__.py")
        return sorted(
            name
            for name in names
            if not (target / name).exists()
            or not (fresh / name).exists()
            or not filecmp.cmp(fresh / name, target / name, shallow=False)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="report stale files instead of writing"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(OUT_DIR)
        for name in stale:
            print(f"stale: {OUT_DIR.relative_to(ROOT) / name} (run: python scripts/gen_protos.py)")
        return 1 if stale else 0
    generate(OUT_DIR)
    print(f"generated {len(list(OUT_DIR.glob('*_pb2*')))} files into {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
