"""Bytes ⇄ models, with the checks every receiver needs.

:func:`decode` never raises anything but :class:`PayloadError`, whose
``reason`` is a short stable code (for counters and logs) and whose message
says what was wrong in words a person can act on.
"""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import ValidationError

from bus.models import SCHEMA_VERSION, Message

#: Largest payload anyone on the bus accepts.  Real payloads are well under
#: 4 KiB; the limit stops a broken or hostile publisher from making a Pi parse
#: megabytes.
MAX_PAYLOAD_BYTES = 64 * 1024

M = TypeVar("M", bound=Message)


class PayloadError(ValueError):
    """A payload was rejected.  ``reason`` is one of :data:`REASONS`."""

    REASONS = ("too_large", "not_json", "not_object", "schema_version", "invalid")

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(message: Message) -> bytes:
    return message.model_dump_json(by_alias=True).encode("utf-8")


def decode(model: type[M], payload: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> M:
    """Validate ``payload`` as ``model``; raise :class:`PayloadError` if it is not one."""
    if len(payload) > max_bytes:
        raise PayloadError("too_large", f"{len(payload)} bytes, limit {max_bytes}")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError("not_json", str(exc)[:200]) from None
    if not isinstance(data, dict):
        raise PayloadError("not_object", f"expected a JSON object, got {type(data).__name__}")
    version = data.get("schema")
    if type(version) is not int or version != SCHEMA_VERSION:  # true == 1 and 1.0 == 1 in Python
        raise PayloadError(
            "schema_version", f"schema {version!r} is not supported (this side speaks {SCHEMA_VERSION})"
        )
    try:
        # Validate from the JSON text, not the dict: strict mode then accepts the
        # JSON spellings of datetimes, UUIDs and enums, and nothing looser.
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise PayloadError("invalid", describe(exc)) from None


def describe(exc: ValidationError, limit: int = 3) -> str:
    """One line per error (at most ``limit``): ``field.path: message``."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(payload)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)
