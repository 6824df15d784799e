"""The coordinator's configuration (docs/configuration.md).

TOML validated by pydantic; every key can also be set by an environment
variable ``EMS_<SECTION>__<KEY>`` (e.g. ``EMS_MQTT__HOST``). Unknown keys are
errors. ``ems check-config FILE`` runs the same validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator

from central.core.flood import FloodPolicy
from central.core.grid import DEFAULT_SHED_THRESHOLD
from central.core.strategy import STRATEGIES, get_strategy
from central.ecowatt import (
    PRODUCTION_MIN_INTERVAL_S,
    PRODUCTION_SIGNALS_URL,
    PRODUCTION_TOKEN_URL,
    RTE_HOST,
    SANDBOX_SIGNALS_URL,
)
from protocol.settings import (
    CommunitySettings,
    ConfigKeyError,
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
    # Keyword arguments of the strategy's constructor, e.g. {window_s = 3.0} for
    # "deadline" or {time_limit_s = 1.0} for "milp"; checked by building it.
    strategy_options: dict[str, float | int | bool] = Field(default_factory=dict)
    netload_max_age_s: float | None = Field(default=None, gt=0.0)
    # Shadow mode (central/shadow.py): strategies scored on every cycle's replies
    # besides the executed one; empty = off. Their options: ``shadow_options``
    # by name, else the executed strategy's own options for its name, else defaults.
    shadow: list[str] = Field(default_factory=list)
    shadow_options: dict[str, dict[str, float | int | bool]] = Field(default_factory=dict)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; known: {', '.join(sorted(STRATEGIES))}")
        return value

    @field_validator("shadow")
    @classmethod
    def _known_shadows(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in STRATEGIES]
        if unknown:
            raise ValueError(
                f"unknown strategy {', '.join(map(repr, unknown))} in cycle.shadow; "
                f"known: {', '.join(sorted(STRATEGIES))}"
            )
        twice = sorted({name for name in value if value.count(name) > 1})
        if twice:
            raise ValueError(f"listed more than once: {', '.join(twice)}")
        return value

    @model_validator(mode="after")
    def _shadow_options_fit(self) -> CycleSettings:
        for name, options in self.shadow_options.items():
            if name not in self.shadow:
                raise ConfigKeyError(
                    f"[cycle] shadow_options.{name}", "not a strategy listed in shadow"
                )
            try:
                get_strategy(name, **options)
            except (TypeError, ValueError) as exc:
                raise ConfigKeyError(f"[cycle] shadow_options.{name}", str(exc)) from exc
        return self

    def shadow_options_of(self, name: str) -> dict[str, float | int | bool]:
        """The options a shadow strategy is built with (see ``shadow_options``)."""
        if name in self.shadow_options:
            return self.shadow_options[name]
        return self.strategy_options if name == self.strategy else {}

    @model_validator(mode="after")
    def _options_fit_strategy(self) -> CycleSettings:
        try:
            get_strategy(self.strategy, **self.strategy_options)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"strategy_options for {self.strategy!r}: {exc}") from exc
        return self

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
    """``[recorder]``: where cycles, replies, decisions and reports are kept.

    ``sqlite:///PATH`` (or a plain path) or
    ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE`` (central/db.py).
    """

    url: str = "sqlite:///ems-central.sqlite"

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        from central.db import check_url

        check_url(value)  # ValueError naming what is wrong, never echoing a password
        return value

    @property
    def sqlite_path(self) -> Path:
        path = self.url.removeprefix("sqlite:///")
        return Path(path)


class EcowattSettings(Section):
    """``[ecowatt]``: RTE's grid-stress signal (reference/devices-and-apis.md §4)."""

    enabled: bool = False
    token_url: str = PRODUCTION_TOKEN_URL
    signals_url: str | None = Field(
        default=None, description="default: RTE's production URL, or its sandbox with sandbox"
    )
    sandbox: bool = False
    client_id: str | None = None
    client_secret: SecretStr | None = None
    min_interval_s: float = Field(default=PRODUCTION_MIN_INTERVAL_S, ge=1.0, le=86_400.0)
    poll_interval_s: float = Field(default=3600.0, ge=1.0, le=86_400.0)
    timeout_s: float = Field(default=10.0, gt=0.0, le=120.0)
    cache_path: Path = Path("ecowatt-signals.json")
    shed_threshold: int = Field(default=DEFAULT_SHED_THRESHOLD, ge=1, le=3)
    timezone: str = "Europe/Paris"

    @field_validator("token_url", "signals_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @property
    def url(self) -> str:
        """The signals URL in use: ``signals_url``, else RTE's sandbox or production."""
        if self.signals_url is not None:
            return self.signals_url
        return SANDBOX_SIGNALS_URL if self.sandbox else PRODUCTION_SIGNALS_URL

    @property
    def is_production(self) -> bool:
        """Whether the signals come from RTE's rate-limited production API."""
        parts = urlsplit(self.url)
        return parts.hostname == RTE_HOST and "/sandbox/" not in parts.path

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @model_validator(mode="after")
    def _consistent(self) -> EcowattSettings:
        if self.signals_url is not None and self.sandbox:
            raise ConfigKeyError(
                "[ecowatt] sandbox", "set either sandbox = true or signals_url, not both"
            )
        if self.is_production and self.min_interval_s < PRODUCTION_MIN_INTERVAL_S:
            raise ConfigKeyError(
                "[ecowatt] min_interval_s",
                f"must be at least {PRODUCTION_MIN_INTERVAL_S:.0f} s for RTE's production "
                "API (one call per 15 minutes)",
            )
        if self.poll_interval_s < self.min_interval_s:
            raise ConfigKeyError(
                "[ecowatt] poll_interval_s",
                f"must not be shorter than min_interval_s ({self.min_interval_s})",
            )
        if self.enabled:
            if not self.client_id:
                raise ConfigKeyError("[ecowatt] client_id", "required when enabled")
            if self.client_secret is None or not self.client_secret.get_secret_value():
                raise ConfigKeyError(
                    "[ecowatt] client_secret",
                    "required when enabled (set it with EMS_ECOWATT__CLIENT_SECRET)",
                )
        return self


class WebSettings(Section):
    """``[web]``: the operator's page and REST API (docs/operator-page.md)."""

    enabled: bool = False
    # Loopback by default: reading is open to whoever reaches the port.
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535, description="0 = any free port (tests)")
    admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for writes (grid overrides); none = read-only"
    )
    sse_queue: int = Field(default=256, ge=1, le=100_000)

    @field_validator("admin_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 24`)")
        return value


class FloodSettings(Section):
    """``[flood]``: per-site flood control (central/core/flood.py), rate of rejection logs."""

    enabled: bool = True
    rate_per_s: float = Field(default=10.0, gt=0.0, le=1_000_000.0)
    burst: int = Field(default=1000, ge=1, le=10_000_000)
    quarantine_after: int = Field(default=5000, ge=1, le=100_000_000)
    quarantine_window_s: float = Field(default=60.0, gt=0.0, le=86_400.0)
    quarantine_s: float = Field(default=600.0, ge=0.0, le=604_800.0)
    log_interval_s: float = Field(default=60.0, ge=0.0, le=86_400.0)

    def policy(self) -> FloodPolicy:
        return FloodPolicy(
            rate_per_s=self.rate_per_s,
            burst=float(self.burst),
            quarantine_after=self.quarantine_after,
            quarantine_window_s=self.quarantine_window_s,
            quarantine_s=self.quarantine_s,
        )


class CentralSettings(ServiceSettings):
    """Everything ``ems-central`` reads."""

    mqtt: MqttSettings = MqttSettings()
    community: CommunitySettings
    cycle: CycleSettings = CycleSettings()
    clock: ClockSettings = ClockSettings()
    recorder: RecorderSettings = RecorderSettings()
    ecowatt: EcowattSettings = EcowattSettings()
    web: WebSettings = WebSettings()
    flood: FloodSettings = FloodSettings()
    log: LogSettings = LogSettings()
    sites: list[str] | None = Field(
        default=None, description="optional allow-list of site ids; others are refused"
    )

    @model_validator(mode="after")
    def _rte_in_real_time(self) -> CentralSettings:
        # RTE's quota runs on wall time: an accelerated clock would call it
        # ``speed`` times too often.
        if self.ecowatt.enabled and self.ecowatt.is_production and self.clock.speed != 1.0:
            raise ConfigKeyError(
                "[clock] speed",
                "must be 1 while [ecowatt] polls RTE's production API (its quota is in real time)",
            )
        return self

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
