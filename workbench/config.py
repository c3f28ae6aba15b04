"""One settings object for the whole workbench.

Precedence: explicit argument (``Settings(...)`` or ``settings.with_overrides(...)``, which the CLI
uses), then environment variables, then defaults. Kafka settings use the standard
``KAFKA_*`` names; everything else uses ``WORKBENCH_*``. Every path the product writes derives
from ``WORKBENCH_HOME``, an absolute path, so nothing depends on the current directory.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["KAFKA_VERSION", "Settings", "get_settings"]

KAFKA_VERSION = "4.1.2"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


def _default_home() -> Path:
    return platformdirs.user_data_path("pulse-workbench")


def _default_cache() -> Path:
    return platformdirs.user_cache_path("pulse-workbench")


class Settings(BaseSettings):
    """Workbench configuration, resolved once and then immutable.

    Examples
    --------
    >>> s = Settings(home="/tmp/wb", kafka_port=19092)
    >>> s.bootstrap_servers
    '127.0.0.1:19092'
    """

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, env_prefix="WORKBENCH_"
    )

    # --- paths -------------------------------------------------------------------------------
    home: Path = Field(
        default_factory=_default_home,
        validation_alias="WORKBENCH_HOME",
        description="Root of everything the workbench writes (data, state, stores, models, logs).",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache,
        validation_alias="WORKBENCH_CACHE_DIR",
        description="Downloaded Kafka jars, fetched once and shared by every WORKBENCH_HOME.",
    )
    reports_dir: Path | None = Field(
        default=None,
        validation_alias="WORKBENCH_REPORTS_DIR",
        description="Where `workbench report` writes; defaults to <home>/reports.",
    )

    # --- Kafka (standard names) ------------------------------------------------------------
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias="KAFKA_BOOTSTRAP_SERVERS",
        description="An existing cluster. Unset: the workbench runs its own local Kafka.",
    )
    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT",
        validation_alias="KAFKA_SECURITY_PROTOCOL",
    )
    kafka_sasl_mechanism: str | None = Field(
        default=None, validation_alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = Field(
        default=None, validation_alias="KAFKA_SASL_USERNAME"
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None, validation_alias="KAFKA_SASL_PASSWORD"
    )

    # --- the managed local broker ----------------------------------------------------------
    kafka_port: int = Field(
        default=9092,
        ge=1,
        le=65535,
        validation_alias="WORKBENCH_KAFKA_PORT",
        description="Client port of the local broker (the controller uses the next port).",
    )
    kafka_heap: str = Field(
        default="1g", validation_alias="WORKBENCH_KAFKA_HEAP"
    )

    # --- topics ------------------------------------------------------------------------------
    topic_query_events: str = "redshift.query_events"
    topic_anomalies: str = "redshift.anomalies"
    topic_dead_letter: str = "redshift.dead_letter"
    topic_replay_control: str = "workbench.replay_control"
    topic_replay_state: str = "workbench.replay_state"
    partitions: int = Field(
        default=4, ge=1, le=1024, validation_alias="WORKBENCH_PARTITIONS"
    )
    retention_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024**2,
        validation_alias="WORKBENCH_RETENTION_BYTES",
        description=(
            "Retention of the event and anomaly topics, per partition. Size, not time: replayed "
            "events carry their historical arrival times as Kafka timestamps, which time-based "
            "retention would delete as soon as they land."
        ),
    )
    shard_retention_days: int | None = Field(
        default=None,
        ge=1,
        validation_alias="WORKBENCH_SHARD_RETENTION_DAYS",
        description=(
            "Delete shard days more than this many event-time days before the newest event "
            "(checked when the scoring app compacts a finished day). Default: keep everything."
        ),
    )

    # --- event-time guard of the apps (workbench.pipeline._eventtime) --------------------------
    event_time_min: datetime = Field(
        default=datetime(2000, 1, 1, tzinfo=UTC),
        validation_alias="WORKBENCH_EVENT_TIME_MIN",
        description="Events before this time are dead-lettered (event_time_out_of_range).",
    )
    event_time_max: datetime = Field(
        default=datetime(2100, 1, 1, tzinfo=UTC),
        validation_alias="WORKBENCH_EVENT_TIME_MAX",
        description="Events at or after this time are dead-lettered (event_time_out_of_range).",
    )
    event_time_horizon_s: float = Field(
        default=7 * 86_400.0,
        gt=0,
        validation_alias="WORKBENCH_EVENT_TIME_HORIZON_S",
        description="Events further ahead of an app's event-time watermark are dead-lettered.",
    )
    event_time_past_horizon_s: float = Field(
        default=366 * 86_400.0,
        gt=0,
        validation_alias="WORKBENCH_EVENT_TIME_PAST_HORIZON_S",
        description=(
            "Events further behind an app's event-time watermark are dead-lettered. Longer than the "
            "forward horizon: a replay reset or backward seek goes back at most the log's span (Redset: 3 months)."
        ),
    )

    # --- stores several machines share (all optional: the default keeps everything in `home`) --------
    lakehouse_catalog: str = Field(
        default="sqlite",
        validation_alias="WORKBENCH_LAKEHOUSE_CATALOG",
        description=(
            "Catalog of the DuckLake lakehouse: 'sqlite' (catalog.sqlite in <home>/lakehouse, one machine) or "
            "'postgres:<libpq connection string>', e.g. 'postgres:dbname=lake host=db port=5432 user=wb' "
            "(every machine attaches the same catalog; a password goes into PGPASSWORD or ~/.pgpass)."
        ),
    )
    lakehouse_data: str | None = Field(
        default=None,
        validation_alias="WORKBENCH_LAKEHOUSE_DATA",
        description=(
            "Folder of the lakehouse's Parquet files; default <home>/lakehouse/data. With a PostgreSQL "
            "catalog, a path every machine mounts at the same place (NFS, SMB, ...)."
        ),
    )
    window_stats_url: str | None = Field(
        default=None,
        validation_alias="WORKBENCH_WINDOW_STATS_URL",
        description=(
            "window_stats in PostgreSQL: a 'postgresql://user@host:port/dbname' URL (password in PGPASSWORD "
            "or ~/.pgpass). Unset: SQLite at <home>/stream_stats.sqlite."
        ),
    )
    shards_dir_override: Path | None = Field(
        default=None,
        validation_alias="WORKBENCH_SHARDS_DIR",
        description="Arrow shards on a shared path (several machines); default <home>/shards.",
    )
    models_dir_override: Path | None = Field(
        default=None,
        validation_alias="WORKBENCH_MODELS_DIR",
        description="Model registry on a shared path (several machines); default <home>/models.",
    )
    archive_dir_override: Path | None = Field(
        default=None,
        validation_alias="WORKBENCH_ARCHIVE_DIR",
        description="Parquet archive of old windows on a shared path (several machines); default <home>/archive.",
    )

    @field_validator("lakehouse_catalog", mode="after")
    @classmethod
    def _catalog(cls, value: str) -> str:
        if value != "sqlite" and not (value.startswith("postgres:") and len(value) > len("postgres:")):
            msg = ("WORKBENCH_LAKEHOUSE_CATALOG must be 'sqlite' or 'postgres:<libpq connection string>' "
                   f"(e.g. 'postgres:dbname=lake host=127.0.0.1 port=5432 user=postgres'). Got {value!r} instead.")
            raise ValueError(msg)
        return value

    @field_validator("window_stats_url", mode="after")
    @classmethod
    def _window_stats_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            msg = ("WORKBENCH_WINDOW_STATS_URL must be a 'postgresql://user@host:port/dbname' URL (unset for "
                   f"SQLite in the home). Got a value starting {value[:14]!r} instead.")
            raise ValueError(msg)
        return value

    @field_validator("lakehouse_data", mode="after")
    @classmethod
    def _lakehouse_data(cls, value: str | None) -> str | None:
        if value is None or "://" in value:
            return value  # an object-store URL is passed to DuckLake as it is
        return str(Path(value).expanduser().resolve())

    @field_validator("home", "cache_dir", "reports_dir", "shards_dir_override", "models_dir_override",
                     "archive_dir_override", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Resolve once, here, so that a later chdir cannot move where the workbench writes.
        return None if value is None else value.expanduser().resolve()

    # --- derived -----------------------------------------------------------------------------
    @property
    def manages_kafka(self) -> bool:
        """True when no external cluster is configured and the workbench runs its own broker."""
        return not self.kafka_bootstrap_servers

    @property
    def bootstrap_servers(self) -> str:
        """The bootstrap address clients use."""
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.kafka_port}"

    @property
    def kafka_dir(self) -> Path:
        """Storage, config and logs of the managed broker."""
        return self.home / "kafka"

    @property
    def kafka_libs_dir(self) -> Path:
        """Kafka jars for the pinned version."""
        return self.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"

    @property
    def data_dir(self) -> Path:
        """Input logs (generated or copied)."""
        return self.home / "data"

    @property
    def state_dir(self) -> Path:
        """Quix Streams state stores and replay positions."""
        return self.home / "state"

    @property
    def shards_dir(self) -> Path:
        """Arrow shards of every scored event (``WORKBENCH_SHARDS_DIR`` or ``<home>/shards``)."""
        return self.shards_dir_override or self.home / "shards"

    @property
    def models_dir(self) -> Path:
        """Model registry (one folder per version plus the current pointer)."""
        return self.models_dir_override or self.home / "models"

    @property
    def sqlite_path(self) -> Path:
        """SQLite database of the stream analytics (``window_stats``)."""
        return self.home / "stream_stats.sqlite"

    @property
    def archive_dir(self) -> Path:
        """Parquet archive of windows older than the retention (``WORKBENCH_ARCHIVE_DIR`` or ``<home>/archive``)."""
        return self.archive_dir_override or self.home / "archive"

    @property
    def lakehouse_dir(self) -> Path:
        """DuckLake lakehouse folder (the SQLite catalog, and the Parquet data unless ``lakehouse_data``)."""
        return self.home / "lakehouse"

    @property
    def lakehouse_data_path(self) -> str:
        """Where the lakehouse's Parquet files go (a folder, or an object-store URL), ending in ``/``."""
        path = self.lakehouse_data or str(self.lakehouse_dir / "data")
        return path if path.endswith("/") else path + "/"

    @property
    def window_stats_location(self) -> str | Path:
        """The ``window_stats`` store: the PostgreSQL URL when configured, else the SQLite file."""
        return self.window_stats_url or self.sqlite_path

    @property
    def logs_dir(self) -> Path:
        """Logs of background processes (broker, apps, training)."""
        return self.home / "logs"

    @property
    def resolved_reports_dir(self) -> Path:
        """Where reports are written."""
        return self.reports_dir or self.home / "reports"

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by every producer, consumer and admin client."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            config["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        return config

    def secret_env_names(self) -> list[str]:
        """Environment variables of the secrets that are set (never written to disk)."""
        return [field.validation_alias for name, field in type(self).model_fields.items()
                if isinstance(getattr(self, name), SecretStr) and isinstance(field.validation_alias, str)]

    def to_env(self, *, include_secrets: bool = True) -> dict[str, str]:
        """These settings as environment variables, so a child process resolves the same ones.

        ``include_secrets=False`` leaves out secrets (the SASL password): for anything written to
        disk, such as the supervisor's spec, which names them instead (:meth:`secret_env_names`).
        """
        env: dict[str, str] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value is None or (isinstance(value, SecretStr) and not include_secrets):
                continue
            key = field.validation_alias if isinstance(field.validation_alias, str) else f"WORKBENCH_{name.upper()}"
            env[key] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if self.manages_kafka:
            env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        return env

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        """Settings from a mapping of environment variables (as :meth:`to_env` writes them);
        fields the mapping lacks come from the process environment and defaults as usual."""
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            key = field.validation_alias if isinstance(field.validation_alias, str) else f"WORKBENCH_{name.upper()}"
            if key in env:
                values[name] = env[key]
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with some fields replaced (``None`` values are ignored), revalidated."""
        changes = {key: value for key, value in overrides.items() if value is not None}
        if not changes:
            return self
        data = self.model_dump()
        data.update(changes)
        return type(self).model_validate(data)


def get_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit overrides on top (``None`` means "not given")."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
