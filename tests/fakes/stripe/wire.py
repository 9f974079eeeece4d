"""Stripe's v1 wire format: form-encoded parameters in, JSON objects and errors out.

Owns the bracket-notation parser (`metadata[k]=v`, `expand[0]=x`, `expand[]=x`), the error
exceptions the handlers raise (and whether Stripe would store them under an idempotency key),
the shared parameter validators, and object ids.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

JSON = dict[str, Any]

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_ID_ALPHABET = string.ascii_letters + string.digits
# Maps whose keys are user data: never turn `metadata[0]=x` into a list.
_FREE_FORM_MAPS = frozenset({"metadata"})


class StripeError(Exception):
    """An API error raised once the endpoint has started executing (stored for idempotency)."""

    stored = True

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def body(self) -> JSON:
        error: JSON = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


class ParamError(StripeError):
    """A request rejected while validating parameters: Stripe saves no idempotent result."""

    stored = False

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(400, message, code=code or "parameter_invalid", param=param)


def new_id(prefix: str) -> str:
    return prefix + "_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def encode_json(obj: JSON) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False).encode("utf-8")


def parse_form(raw: str) -> JSON:
    """Decode a form/query string in Stripe's bracket notation into nested dicts and lists."""
    root: JSON = {}
    for key, value in parse_qsl(raw, keep_blank_values=True, strict_parsing=False):
        _assign(root, _key_path(key), value)
    parsed = _listify(root, parent=None)
    if not isinstance(parsed, dict):
        raise ParamError("Invalid parameters: expected named parameters")
    return parsed


def _key_path(key: str) -> list[str]:
    head, _, rest = key.partition("[")
    if not head:
        raise ParamError(f"Invalid parameter name: {key!r}")
    return [head, *_BRACKETS.findall("[" + rest)] if rest else [head]


def _assign(node: JSON, path: list[str], value: str) -> None:
    for depth, segment in enumerate(path):
        last = depth == len(path) - 1
        # `expand[]=a&expand[]=b`: an empty index appends.
        key = str(len(node)) if segment == "" else segment
        if last:
            node[key] = value
            return
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ParamError(f"Invalid array or hash for parameter {path[0]!r}", param=path[0])
        node = child


def _listify(node: JSON, parent: str | None) -> Any:
    converted = {
        key: _listify(value, key) if isinstance(value, dict) else value
        for key, value in node.items()
    }
    indices = [key for key in converted if key.isdigit()]
    if parent not in _FREE_FORM_MAPS and converted and len(indices) == len(converted):
        return [converted[key] for key in sorted(indices, key=int)]
    return converted


def check_params(params: JSON, allowed: set[str], required: frozenset[str] = frozenset()) -> None:
    for name in params:
        if name not in allowed and name != "expand":
            raise ParamError(
                f"Received unknown parameter: {name}", param=name, code="parameter_unknown"
            )
    for name in sorted(required):
        if params.get(name) in (None, ""):
            raise ParamError(
                f"Missing required param: {name}.", param=name, code="parameter_missing"
            )


def opt_str(params: JSON, name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ParamError(f"Invalid string: {name}", param=name)
    return value


def opt_int(params: JSON, name: str) -> int | None:
    value = opt_str(params, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ParamError(f"Invalid integer: {value}", param=name) from None


def opt_decimal(params: JSON, name: str) -> Decimal | None:
    value = opt_str(params, name)
    if value is None:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ParamError(f"Invalid decimal: {value}", param=name) from None
    if not number.is_finite():
        raise ParamError(f"Invalid decimal: {value}", param=name)
    return number


def opt_bool(params: JSON, name: str, default: bool) -> bool:
    value = opt_str(params, name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise ParamError(f"Invalid boolean: {value}", param=name)
    return value == "true"


def opt_enum(params: JSON, name: str, choices: tuple[str, ...], default: str) -> str:
    value = opt_str(params, name)
    if value is None:
        return default
    if value not in choices:
        raise ParamError(f"Invalid {name}: must be one of {', '.join(choices)}", param=name)
    return value


def metadata(params: JSON, current: dict[str, str] | None = None) -> dict[str, str]:
    """Apply Stripe's metadata rules: empty value unsets a key, `metadata=` unsets all."""
    result = dict(current or {})
    raw = params.get("metadata")
    if raw is None:
        return result
    if raw == "":
        return {}
    if not isinstance(raw, dict):
        raise ParamError("Invalid hash", param="metadata")
    for key, value in raw.items():
        if not isinstance(value, str) or len(key) > 40 or len(value) > 500:
            raise ParamError(f"Invalid metadata[{key}]", param=f"metadata[{key}]")
        if value == "":
            result.pop(key, None)
        else:
            result[key] = value
    if len(result) > 50:
        raise ParamError("Metadata can have at most 50 keys", param="metadata")
    return result


def expand_fields(params: JSON, expandable: frozenset[str]) -> list[str]:
    raw = params.get("expand", [])
    if not isinstance(raw, list) or not all(isinstance(field, str) for field in raw):
        raise ParamError("Invalid array", param="expand")
    for field in raw:
        if field not in expandable:
            raise ParamError(f"This property cannot be expanded ({field}).", param="expand")
    return list(raw)
