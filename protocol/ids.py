"""Identifiers of communities, sites and loads (PROTOCOL.md, Conventions)."""

from __future__ import annotations

import re

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
_ID_RE = re.compile(ID_PATTERN)


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a string that matches the id pattern."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def validate_id(value: str, what: str = "id") -> str:
    """Return ``value`` when it is a valid id, else raise ``ValueError`` naming ``what``."""
    if not is_valid_id(value):
        raise ValueError(f"{what} {value!r} does not match {ID_PATTERN}")
    return value
