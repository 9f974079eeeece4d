"""TLS (and mutual TLS) credentials for the gRPC port, from PEM files named in the settings."""

from __future__ import annotations

from pathlib import Path

import grpc

from quotaplane.config import ConfigError


class TlsConfigError(ConfigError):
    """The TLS settings are incomplete or a file cannot be read."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def server_credentials(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> grpc.ServerCredentials | None:
    """None for plaintext (no cert and no key); TLS, or mTLS when ``client_ca`` is set."""
    if cert is None and key is None:
        if client_ca is not None:
            raise TlsConfigError("QUOTAPLANE_TLS_CLIENT_CA needs QUOTAPLANE_TLS_CERT and _KEY")
        return None
    if cert is None or key is None:
        raise TlsConfigError("QUOTAPLANE_TLS_CERT and QUOTAPLANE_TLS_KEY must be set together")
    pair = (_read(key, "TLS key"), _read(cert, "TLS certificate"))
    roots = _read(client_ca, "client CA bundle") if client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=roots, require_client_auth=roots is not None
    )
