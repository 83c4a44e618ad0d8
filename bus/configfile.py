"""Loading TOML configuration files into strict pydantic models.

Shared by edge and central so that every config file in madoguchi fails the
same way: with the file name, the key path, what was wrong, and for a
misspelt key a "did you mean" hint.
"""

from __future__ import annotations

import difflib
import hashlib
import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ValidationError

C = TypeVar("C", bound=BaseModel)


class ConfigError(Exception):
    """A configuration file is missing, not TOML, or does not validate."""


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


#: An IANA time zone name, e.g. "Asia/Tokyo" (checked against the system's tz database).
TimeZoneName = Annotated[str, AfterValidator(_known_zone)]


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at ``loc`` (for "did you mean"), best effort."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", {})
        field = fields.get(part)
        if field is None:
            return []
        current = _model_of(field.annotation)
    if current is None:
        return []
    return list(getattr(current, "model_fields", {}))


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def explain(model: type[BaseModel], exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s):"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and loc:
            candidates = _fields_at(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), candidates, n=1)
            msg = f"unknown key '{loc[-1]}'" + (f" (did you mean '{close[0]}'?)" if close else "")
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def load_toml(path: str | Path, model: type[C]) -> C:
    """Read ``path`` and validate it as ``model``; raise :class:`ConfigError` otherwise."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_toml(raw, model, source=str(path))


def parse_toml(raw: bytes, model: type[C], *, source: str = "<config>") -> C:
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(explain(model, exc, source)) from None


def digest(raw: bytes) -> str:
    """The config hash published in a device's info (first 16 hex of SHA-256)."""
    return hashlib.sha256(raw).hexdigest()[:16]
