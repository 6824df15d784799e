"""Configuration plumbing shared by both services: TOML + environment, validated.

Each service declares its settings as a pydantic-settings class; ``load_settings``
reads the TOML file, lets ``EMS_<SECTION>__<KEY>`` environment variables
override any key, validates everything at once and raises ``ConfigError``
whose message names the file and every bad key.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

if sys.version_info >= (3, 11):  # noqa: UP036 - tomli where tomllib is missing
    import tomllib
else:  # pragma: no cover - Python 3.10 and older
    import tomli as tomllib

from protocol.ids import ID_PATTERN, validate_id

EX_CONFIG = 78
"""sysexits.h EX_CONFIG: the units use RestartPreventExitStatus=78 so systemd
does not restart a service in a loop on a bad config."""

ENV_PREFIX = "EMS_"


class ConfigError(Exception):
    """A configuration file or variable is wrong; ``problems`` lists ``(key, message)``."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {key}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))


class ConfigKeyError(ValueError):
    """Raised by a cross-section check to name the key at fault (e.g. ``[loads] 1.device``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class MqttSettings(Section):
    """``[mqtt]``: how to reach the broker."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = Field(default=None, max_length=64)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    protocol: Literal["5", "3.1.1"] = "5"
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    max_inflight: int = Field(default=1000, ge=1, le=65000)


class CommunitySettings(Section):
    """``[community]``: which community, under which topic root."""

    id: str
    topic_root: str = "ems"
    max_site_kw: float = Field(default=50.0, gt=0, le=10_000)

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return validate_id(value, "community id")


class LogSettings(Section):
    """``[log]``: level and format (``auto`` = console on a terminal, JSON otherwise)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ServiceSettings(BaseSettings):
    """Base of each service's settings: TOML file first, environment on top."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables win over the file (12-factor; systemd drop-ins).
        return (env_settings, init_settings)


S = TypeVar("S", bound=ServiceSettings)


def _key(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) >= 2:
        return f"[{parts[0]}] {'.'.join(parts[1:])}"
    return parts[0] if parts else "(file)"


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; a syntax error becomes a ``ConfigError`` with its line."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), [("(file)", "not found")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [("(syntax)", str(exc))]) from None
    except OSError as exc:
        raise ConfigError(str(path), [("(file)", exc.strerror or str(exc))]) from None


def load_settings(
    cls: type[S],
    path: Path | str | None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> S:
    """Load ``cls`` from the TOML file at ``path`` (optional) and the environment.

    ``env`` replaces ``os.environ`` (tests); ``overrides`` are merged over the
    file (the demo uses it). Raises ``ConfigError`` naming every bad key.
    """
    source = str(path) if path is not None else "environment"
    data: dict[str, Any] = read_toml(Path(path)) if path is not None else {}
    for section, values in (overrides or {}).items():
        if isinstance(values, Mapping) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    saved: dict[str, str] | None = None
    if env is not None:
        saved = dict(os.environ)
        for key in [k for k in os.environ if k.upper().startswith(ENV_PREFIX)]:
            del os.environ[key]
        os.environ.update(env)
    try:
        return cls(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            msg = err.get("msg", "invalid")
            if err.get("type") == "extra_forbidden":
                msg = "unknown key"
            loc = tuple(err.get("loc", ()))
            key = _key(loc)
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, ConfigKeyError):
                key, msg = cause.key, cause.message
            if err.get("type") == "missing":
                msg = "required key is missing"
                if len(loc) == 1:  # the required top-level entries are sections
                    key, msg = f"[{loc[0]}]", "required section is missing"
            problems.append((key, msg))
        raise ConfigError(source, problems) from None
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)


__all__ = [
    "EX_CONFIG",
    "ID_PATTERN",
    "CommunitySettings",
    "ConfigError",
    "ConfigKeyError",
    "LogSettings",
    "MqttSettings",
    "Section",
    "ServiceSettings",
    "load_settings",
    "read_toml",
]
