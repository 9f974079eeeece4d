"""A benchmark run's private workspace: a temporary directory, a Redis key prefix of its own,
and a migrated SQLite ledger next to the plans file the run's servers load."""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from quotaplane.storage.sql import migrate


@dataclass(frozen=True)
class Workspace:
    work: Path
    key_prefix: str
    database_url: str
    plans: Path


def h2load_missing() -> bool:
    """True (and says how to install it) when h2load is not on PATH."""
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install -y nghttp2-client", file=sys.stderr)
        return True
    return False


def new_workspace(name: str, plans_yaml: str) -> Workspace:
    work = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    plans = work / "plans.yaml"
    plans.write_text(plans_yaml)
    database_url = f"sqlite:///{work / 'ledger.db'}"
    migrate.upgrade(database_url)
    return Workspace(work, f"qpbench-{secrets.token_hex(3)}", database_url, plans)
