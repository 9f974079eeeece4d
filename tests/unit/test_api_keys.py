"""API key secrets: shape, entropy, the stored hash and the display prefix."""

from __future__ import annotations

import hashlib

import pytest

from quotaplane.domain.errors import InvalidArgument
from quotaplane.domain.tenants.api_keys import (
    display_prefix,
    generate_secret,
    hash_api_key,
    looks_like_secret,
    parse_key_name,
)


def test_a_secret_is_qp_live_and_32_urlsafe_bytes() -> None:
    secret = generate_secret()
    assert secret.startswith("qp_live_")
    assert len(secret) == len("qp_live_") + 43  # 32 bytes in unpadded urlsafe base64
    assert looks_like_secret(secret)


def test_secrets_do_not_repeat() -> None:
    assert len({generate_secret() for _ in range(1000)}) == 1000


def test_the_stored_form_is_the_sha256_hex_of_the_secret() -> None:
    secret = generate_secret()
    assert hash_api_key(secret) == hashlib.sha256(secret.encode()).hexdigest()
    assert len(hash_api_key(secret)) == 64 and secret not in hash_api_key(secret)


def test_the_display_prefix_is_the_first_12_characters() -> None:
    secret = generate_secret()
    assert display_prefix(secret) == secret[:12] and display_prefix(secret).startswith("qp_live_")


@pytest.mark.parametrize(
    "value", ["", "qp_live_", "qp_test_" + "a" * 43, "qp_live_" + "a" * 42, "qp_live_" + "!" * 43]
)
def test_strings_not_shaped_like_secrets_are_recognised(value: str) -> None:
    assert not looks_like_secret(value)


def test_a_key_name_is_trimmed() -> None:
    assert parse_key_name("  production ") == "production"


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "bad\nname"])
def test_bad_key_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="name"):
        parse_key_name(name)
