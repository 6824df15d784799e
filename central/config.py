"""The coordinator's configuration (docs/configuration.md).

TOML validated by pydantic; every key can also be set by an environment
variable ``EMS_<SECTION>__<KEY>`` (e.g. ``EMS_MQTT__HOST``). Unknown keys are
errors. ``ems check-config FILE`` runs the same validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from central.core.strategy import STRATEGIES
from protocol.settings import (
    CommunitySettings,
    LogSettings,
    MqttSettings,
    Section,
    ServiceSettings,
    load_settings,
)


class CycleSettings(Section):
    """``[cycle]``: the allocation cycle."""

    period_s: float = Field(default=900.0, ge=1.0, le=86_400.0)
    reply_timeout_s: float = Field(default=60.0, gt=0.0)
    strategy: str = "fifo"
    netload_max_age_s: float | None = Field(default=None, gt=0.0)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; known: {', '.join(sorted(STRATEGIES))}")
        return value

    @model_validator(mode="after")
    def _timeout_within_period(self) -> CycleSettings:
        if self.reply_timeout_s >= self.period_s:
            raise ValueError(
                f"reply_timeout_s ({self.reply_timeout_s}) must be shorter than "
                f"period_s ({self.period_s})"
            )
        return self

    @property
    def netload_age_s(self) -> float:
        """A net load is stale after one period unless configured otherwise."""
        return self.netload_max_age_s if self.netload_max_age_s is not None else self.period_s


class ClockSettings(Section):
    """``[clock]``: ``speed`` > 1 runs time faster (demos, tests): 180 = a 15-min period in 5 s."""

    speed: float = Field(default=1.0, gt=0.0, le=100_000.0)


class RecorderSettings(Section):
    """``[recorder]``: where cycles, replies, decisions and reports are kept."""

    url: str = "sqlite:///ems-central.sqlite"

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        if "://" in value and not value.startswith("sqlite:///"):
            raise ValueError("only sqlite:///PATH (or a plain file path) is supported")
        return value

    @property
    def sqlite_path(self) -> Path:
        path = self.url.removeprefix("sqlite:///")
        return Path(path)


class CentralSettings(ServiceSettings):
    """Everything ``ems-central`` reads."""

    mqtt: MqttSettings = MqttSettings()
    community: CommunitySettings
    cycle: CycleSettings = CycleSettings()
    clock: ClockSettings = ClockSettings()
    recorder: RecorderSettings = RecorderSettings()
    log: LogSettings = LogSettings()
    sites: list[str] | None = Field(
        default=None, description="optional allow-list of site ids; others are refused"
    )

    @field_validator("sites")
    @classmethod
    def _valid_sites(cls, value: list[str] | None) -> list[str] | None:
        from protocol.ids import validate_id

        if value is not None:
            for site in value:
                validate_id(site, "site id")
        return value


def load_central_settings(
    path: Path | str | None, env: dict[str, str] | None = None, **overrides: Any
) -> CentralSettings:
    """Load and validate the coordinator's settings (raises ``ConfigError``)."""
    return load_settings(CentralSettings, path, env=env, overrides=overrides)
