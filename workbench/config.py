"""One settings object for the whole workbench.

Precedence: explicit argument (``Settings(...)`` or ``settings.with_overrides(...)``, which the CLI
uses), then environment variables, then defaults. Kafka settings use the standard
``KAFKA_*`` names; everything else uses ``WORKBENCH_*``. Every path the product writes derives
from ``WORKBENCH_HOME``, an absolute path, so nothing depends on the current directory.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workbench.exceptions import ConfigurationError

__all__ = ["KAFKA_VERSION", "MANAGED_SASL_MECHANISM", "SASL_MECHANISMS", "SECURITY_PROTOCOLS", "Settings",
           "get_settings"]

KAFKA_VERSION = "4.1.2"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SECURITY_PROTOCOLS: tuple[str, ...] = ("PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL")
SASL_MECHANISMS: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
#: The SASL mechanism the workbench's own clients use on a secured listener of the managed broker.
MANAGED_SASL_MECHANISM = "SCRAM-SHA-512"


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
        # `export WORKBENCH_KAFKA_PORT=` (a template's blank line) means "not set", for every variable
        frozen=True, extra="forbid", populate_by_name=True, env_prefix="WORKBENCH_", env_ignore_empty=True
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
    kafka_security_protocol: SecurityProtocol | None = Field(
        default=None,
        validation_alias="KAFKA_SECURITY_PROTOCOL",
        description="librdkafka security.protocol. Unset: PLAINTEXT, or the managed broker's first listener.",
    )
    kafka_sasl_mechanism: str | None = Field(
        default=None, validation_alias="KAFKA_SASL_MECHANISM",
        description="librdkafka sasl.mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER, GSSAPI).",
    )
    kafka_sasl_username: str | None = Field(
        default=None, validation_alias="KAFKA_SASL_USERNAME"
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None, validation_alias="KAFKA_SASL_PASSWORD"
    )
    kafka_ssl_ca_location: Path | None = Field(
        default=None, validation_alias="KAFKA_SSL_CA_LOCATION",
        description="librdkafka ssl.ca.location: PEM file of the CA that signed the brokers' certificates.",
    )
    kafka_ssl_certificate_location: Path | None = Field(
        default=None, validation_alias="KAFKA_SSL_CERTIFICATE_LOCATION",
        description="librdkafka ssl.certificate.location: the client's PEM certificate (mutual TLS).",
    )
    kafka_ssl_key_location: Path | None = Field(
        default=None, validation_alias="KAFKA_SSL_KEY_LOCATION",
        description="librdkafka ssl.key.location: the client's PEM private key (mutual TLS).",
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, validation_alias="KAFKA_SSL_KEY_PASSWORD",
        description="librdkafka ssl.key.password: passphrase of the client's private key.",
    )
    kafka_ssl_endpoint_identification_algorithm: Literal["https", "none"] | None = Field(
        default=None, validation_alias="KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
        description="librdkafka ssl.endpoint.identification.algorithm (librdkafka's default: https).",
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
    kafka_listeners: str = Field(
        default="PLAINTEXT",
        validation_alias="WORKBENCH_KAFKA_LISTENERS",
        description=(
            "Comma-separated listeners of the local broker, from PLAINTEXT, SASL_PLAINTEXT, SSL, SASL_SSL. "
            "The first is on WORKBENCH_KAFKA_PORT and is the one the workbench's own clients use; the others "
            "follow on port + 2, + 3, ... (port + 1 is the controller)."
        ),
    )

    # --- topics ------------------------------------------------------------------------------
    topic_query_events: str = "redshift.query_events"
    topic_anomalies: str = "redshift.anomalies"
    topic_dead_letter: str = "redshift.dead_letter"
    topic_replay_control: str = "workbench.replay_control"
    topic_replay_state: str = "workbench.replay_state"
    consumer_group_prefix: str = Field(
        default="workbench",
        validation_alias="WORKBENCH_CONSUMER_GROUP_PREFIX",
        description=(
            "The apps' consumer groups are <prefix>-scoring, <prefix>-analytics and <prefix>-anomaly-sink "
            "(the trainer election and the analytics window state follow them). Processes with one prefix "
            "share the work; give a second deployment on the same cluster its own prefix."
        ),
    )
    partitions: int = Field(
        default=4, ge=1, le=1024, validation_alias="WORKBENCH_PARTITIONS"
    )
    kafka_session_timeout_ms: int | None = Field(
        default=None, ge=6_000, le=300_000, validation_alias="WORKBENCH_SESSION_TIMEOUT_MS",
        description=(
            "The apps' consumer session.timeout.ms: how long a silent member keeps its partitions. Default "
            "6000 on the managed broker (a killed process's partitions move quickly) and 15000 on a cluster, "
            "where a broker that dies is declared dead after broker.session.timeout.ms (9 s) and its groups' "
            "coordinator moves only then (at 6 s every member of those groups was dropped)."
        ),
    )
    end_of_log_markers: bool = Field(
        default=True,
        validation_alias="WORKBENCH_END_OF_LOG_MARKERS",
        description=(
            "A finished replay ends every partition of the events topic with an end-of-log marker "
            "(a zero-row arrow message with the header end_of_log), from which the scoring app "
            "judges the log's last day. Turn it off when a tool that takes every message for a JSON "
            "row reads the topic too; the last day is then judged only once a later day's events arrive."
        ),
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
    window_clock_messages: int = Field(
        default=16,
        ge=1,
        le=4096,
        validation_alias="WORKBENCH_WINDOW_CLOCK_MESSAGES",
        description=(
            "Analytics windows close by the latest event time this many consecutive messages of a partition "
            "(of an instance, closing_strategy='key') have all reached: fewer messages far ahead leave the "
            "window clock where it is (workbench.pipeline._window_state). 1: the running maximum."
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
    shards_dir_override: Path | str | None = Field(
        default=None,
        validation_alias="WORKBENCH_SHARDS_DIR",
        description=(
            "Arrow shards on a shared path or an object-store URL every machine reaches (several machines), "
            "e.g. 's3://bucket/prefix' (any URL pyarrow.fs.FileSystem.from_uri opens; credentials from the "
            "usual AWS_* variables); default <home>/shards."
        ),
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
    trainer_election: Literal["auto", "lock", "broker"] = Field(
        default="auto",
        validation_alias="WORKBENCH_TRAINER_ELECTION",
        description=(
            "How the scoring processes elect their one trainer: 'lock' (a file lock in the models folder: "
            "one machine, or a shared file system with working POSIX locks), 'broker' (a one-partition Kafka "
            "topic: any number of machines, only Kafka shared) or 'auto' (broker when WORKBENCH_MODELS_DIR or "
            "WORKBENCH_SHARDS_DIR is set, else lock)."
        ),
    )

    def __init__(self, **values: Any) -> None:
        with _explained():
            super().__init__(**values)

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

    @field_validator("shards_dir_override", mode="after")
    @classmethod
    def _shards_dir(cls, value: Path | str | None) -> Path | str | None:
        if value is None or (isinstance(value, str) and "://" in value):
            return value  # an object-store URL is opened by pyarrow as it is
        return Path(value).expanduser().resolve()

    @field_validator("lakehouse_data", mode="after")
    @classmethod
    def _lakehouse_data(cls, value: str | None) -> str | None:
        if value is None or "://" in value:
            return value  # an object-store URL is passed to DuckLake as it is
        return str(Path(value).expanduser().resolve())

    @field_validator("kafka_listeners", mode="before")
    @classmethod
    def _listeners(cls, value: Any) -> str:
        items = value if isinstance(value, list | tuple) else str(value).split(",")
        names = [str(item).strip().upper() for item in items if str(item).strip()]
        unknown = [name for name in names if name not in SECURITY_PROTOCOLS]
        if not names or unknown or len(set(names)) != len(names):
            msg = (f"WORKBENCH_KAFKA_LISTENERS must be a comma-separated list of distinct listeners from "
                   f"{', '.join(SECURITY_PROTOCOLS)}. Got {value!r} instead.")
            raise ValueError(msg)
        return ",".join(names)

    @field_validator("kafka_ssl_ca_location", "kafka_ssl_certificate_location", "kafka_ssl_key_location",
                     "kafka_sasl_mechanism", "kafka_security_protocol", "kafka_bootstrap_servers",
                     "kafka_sasl_username", "kafka_sasl_password", "kafka_ssl_key_password",
                     "kafka_ssl_endpoint_identification_algorithm", "reports_dir", "lakehouse_data",
                     "window_stats_url", "shards_dir_override", "models_dir_override", "archive_dir_override",
                     "shard_retention_days", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any, info: Any) -> Any:
        # `export KAFKA_SSL_CA_LOCATION=` means "not set", not "the current directory"
        if isinstance(value, str) and not value.strip():
            return None
        if info.field_name == "kafka_security_protocol" and isinstance(value, str):
            return value.strip().upper()  # librdkafka accepts sasl_ssl as well as SASL_SSL
        if info.field_name == "kafka_ssl_endpoint_identification_algorithm" and isinstance(value, str):
            return value.strip().lower()
        return value

    @field_validator("home", "cache_dir", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any, info: Any) -> Any:
        # `export WORKBENCH_HOME=` means the default, not the current directory
        if isinstance(value, str) and not value.strip():
            return _default_home() if info.field_name == "home" else _default_cache()
        return value

    @field_validator("kafka_bootstrap_servers", mode="after")
    @classmethod
    def _bootstrap(cls, value: str | None) -> str | None:
        # Checked here: librdkafka takes any text and retries it until a timeout, as if the cluster were down.
        if value is None:
            return None
        items = [item.strip() for item in value.split(",") if item.strip()]
        bad = [item for item in items if not _valid_address(item)]
        if not items:  # only commas: joined, "" would silently mean "no cluster: start the local Kafka"
            msg = (f"KAFKA_BOOTSTRAP_SERVERS names no broker (got {value!r}): give host:port of the cluster, or "
                   "unset it (or set it empty) to use the workbench's local Kafka.")
            raise ValueError(msg)
        if bad:
            msg = ("KAFKA_BOOTSTRAP_SERVERS must be a comma-separated list of host:port (IPv6: [address]:port), "
                   f"e.g. 'broker-1.example.com:9092,broker-2.example.com:9092'. Got {value!r}, in which "
                   f"{bad[0]!r} is not one.")
            raise ValueError(msg)
        return ",".join(items)

    @field_validator("topic_query_events", "topic_anomalies", "topic_dead_letter", "topic_replay_control",
                     "topic_replay_state", mode="after")
    @classmethod
    def _topic(cls, value: str, info: Any) -> str:
        if not _TOPIC_NAME.fullmatch(value) or value in (".", ".."):
            msg = (f"WORKBENCH_{info.field_name.upper()} must be a Kafka topic name: 1 to 249 of the characters "
                   f"a-z, A-Z, 0-9, '.', '_' and '-'. Got {value!r} instead.")
            raise ValueError(msg)
        return value

    @field_validator("consumer_group_prefix", mode="after")
    @classmethod
    def _group_prefix(cls, value: str) -> str:
        if not _TOPIC_NAME.fullmatch(value) or len(value) > 200:
            msg = ("WORKBENCH_CONSUMER_GROUP_PREFIX must be 1 to 200 of the characters a-z, A-Z, 0-9, '.', '_' "
                   f"and '-' (it names consumer groups such as <prefix>-scoring). Got {value!r} instead.")
            raise ValueError(msg)
        return value

    @field_validator("kafka_heap", mode="after")
    @classmethod
    def _heap(cls, value: str) -> str:
        match = re.fullmatch(r"([1-9]\d*)([kKmMgG]?)", value.strip())
        size = int(match[1]) * 1024 ** " kmg".index(match[2].lower() or " ") if match else 0
        if size < _MIN_HEAP_BYTES:  # the broker starts with -Xms256m; the JVM refuses a smaller maximum
            msg = (f"WORKBENCH_KAFKA_HEAP must be a Java heap size of at least 256m, such as 768m or 2g. "
                   f"Got {value!r} instead.")
            raise ValueError(msg)
        return value.strip()

    @field_validator("kafka_sasl_mechanism", mode="after")
    @classmethod
    def _mechanism(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.upper() not in SASL_MECHANISMS:
            msg = f"KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}. Got {value!r} instead."
            raise ValueError(msg)
        return value.upper()

    @field_validator("home", "cache_dir", "reports_dir", "models_dir_override",
                     "archive_dir_override", "kafka_ssl_ca_location", "kafka_ssl_certificate_location",
                     "kafka_ssl_key_location", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Resolve once, here, so that a later chdir cannot move where the workbench writes.
        return None if value is None else value.expanduser().resolve()

    @field_validator("home", "cache_dir", "reports_dir", "models_dir_override", "archive_dir_override",
                     "shards_dir_override", "lakehouse_data", mode="after")
    @classmethod
    def _folder(cls, value: Path | str | None, info: Any) -> Path | str | None:
        # A file where a folder of the workbench goes is found here, naming the setting, rather than
        # as a NotADirectoryError deep inside some command. (An object-store URL is no local folder.)
        if value is None or (isinstance(value, str) and "://" in value):
            return value
        folder = Path(value)
        existing = next((path for path in (folder, *folder.parents) if path.exists()), None)
        if existing is not None and not existing.is_dir():
            alias = cls.model_fields[info.field_name].validation_alias
            where = "is a file" if existing == folder else f"lies under {existing}, which is a file"
            msg = f"{alias} must be a folder, but {folder} {where}."
            raise ValueError(msg)
        return value

    # --- derived -----------------------------------------------------------------------------
    @property
    def session_timeout_ms(self) -> int:
        """The apps' consumer ``session.timeout.ms`` (``kafka_session_timeout_ms``, or its default)."""
        if self.kafka_session_timeout_ms is not None:
            return self.kafka_session_timeout_ms
        return 6_000 if self.manages_kafka else 15_000

    @property
    def manages_kafka(self) -> bool:
        """True when no external cluster is configured and the workbench runs its own broker."""
        return not self.kafka_bootstrap_servers

    @property
    def bootstrap_servers(self) -> str:
        """The bootstrap address clients use."""
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.kafka_port}"

    @property
    def kafka_listener_ports(self) -> dict[str, int]:
        """Port of each listener of the managed broker, in the order of WORKBENCH_KAFKA_LISTENERS."""
        names = self.kafka_listeners.split(",")
        return {name: self.kafka_port + (0 if i == 0 else i + 1) for i, name in enumerate(names)}

    @property
    def kafka_security_dir(self) -> Path:
        """The managed broker's generated credentials, CA and key stores (owner-only)."""
        return self.kafka_dir / "security"

    @property
    def kafka_credentials_file(self) -> Path:
        """JSON file of the managed broker's generated SASL user and key-store password."""
        return self.kafka_security_dir / "credentials.json"

    @property
    def kafka_ca_file(self) -> Path:
        """PEM certificate of the managed broker's private CA (what clients trust)."""
        return self.kafka_security_dir / "ca.pem"

    @property
    def security_protocol(self) -> str:
        """The security.protocol clients use: KAFKA_SECURITY_PROTOCOL, else the managed broker's
        first listener, else PLAINTEXT."""
        if self.kafka_security_protocol:
            return self.kafka_security_protocol
        return self.kafka_listeners.split(",")[0] if self.manages_kafka else "PLAINTEXT"

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
    def shards_dir(self) -> Path | str:
        """Arrow shards of every scored event (``WORKBENCH_SHARDS_DIR`` or ``<home>/shards``): a folder, or an
        object-store URL string (:mod:`workbench.store.shards` takes both)."""
        return self.shards_dir_override or self.home / "shards"

    @property
    def trainer_election_mode(self) -> Literal["lock", "broker"]:
        """The election the scoring processes use (``trainer_election`` with ``auto`` resolved)."""
        if self.trainer_election != "auto":
            return self.trainer_election
        shared = self.models_dir_override is not None or self.shards_dir_override is not None
        return "broker" if shared else "lock"

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
    def window_history_dir(self) -> Path:
        """Reference versions ``workbench evaluate`` trains for a log's window history, kept for its next run
        on the same log and code (:func:`workbench.ml.residual_history.history_folder`)."""
        return self.home / "cache" / "window-history"

    @property
    def resolved_reports_dir(self) -> Path:
        """Where reports are written."""
        return self.reports_dir or self.home / "reports"

    def kafka_client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by every producer, consumer and admin client (the only place
        they are built).

        The KAFKA_* settings map to their librdkafka names. When the workbench manages the broker
        and its first listener is secured, what is unset comes from the broker's generated
        credentials (SCRAM-SHA-512 user, private CA) under ``<home>/kafka/security``.
        """
        protocol = self.security_protocol
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": protocol}
        mechanism, username = self.kafka_sasl_mechanism, self.kafka_sasl_username
        password = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password is not None else None
        ca = self.kafka_ssl_ca_location
        if self.manages_kafka and protocol != "PLAINTEXT":
            managed = self._managed_credentials()
            if protocol.startswith("SASL_"):
                mechanism = mechanism or MANAGED_SASL_MECHANISM
                if username is None and password is None and managed:
                    username, password = managed.get("username"), managed.get("password")
            if protocol.endswith("SSL") and ca is None and self.kafka_ca_file.exists():
                ca = self.kafka_ca_file
        optional = {
            "sasl.mechanism": mechanism,
            "sasl.username": username,
            "sasl.password": password,
            "ssl.ca.location": ca,
            "ssl.certificate.location": self.kafka_ssl_certificate_location,
            "ssl.key.location": self.kafka_ssl_key_location,
            "ssl.key.password": (self.kafka_ssl_key_password.get_secret_value()
                                 if self.kafka_ssl_key_password is not None else None),
            "ssl.endpoint.identification.algorithm": self.kafka_ssl_endpoint_identification_algorithm,
        }
        config.update({key: str(value) for key, value in optional.items() if value is not None})
        self._check_client_config(config)
        return config

    def _check_client_config(self, config: dict[str, Any]) -> None:
        """Refuse, naming the settings, what librdkafka would refuse when a client is created (a
        KafkaException traceback from whichever module creates the first client)."""
        protocol = config["security.protocol"]
        mechanism = config.get("sasl.mechanism")
        if protocol.startswith("SASL_") and mechanism is None:
            msg = (f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_MECHANISM, one of "
                   f"{', '.join(SASL_MECHANISMS)} (unset, librdkafka would try GSSAPI/Kerberos).")
            raise ConfigurationError(msg)
        needs_password = mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
        if protocol.startswith("SASL_") and needs_password and not self.manages_kafka:
            missing = [name for name, key in (("KAFKA_SASL_USERNAME", "sasl.username"),
                                              ("KAFKA_SASL_PASSWORD", "sasl.password")) if key not in config]
            if missing:
                msg = (f"KAFKA_SASL_MECHANISM={mechanism} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD, "
                       f"but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set.")
                raise ConfigurationError(msg)
        if protocol.endswith("SSL"):
            for key, variable in (("ssl.ca.location", "KAFKA_SSL_CA_LOCATION"),
                                  ("ssl.certificate.location", "KAFKA_SSL_CERTIFICATE_LOCATION"),
                                  ("ssl.key.location", "KAFKA_SSL_KEY_LOCATION")):
                if key in config and not Path(config[key]).exists():
                    msg = f"{variable} is {config[key]}, which does not exist (KAFKA_SECURITY_PROTOCOL={protocol})."
                    raise ConfigurationError(msg)
            if "ssl.ca.location" in config and (refused := _refused_ca(config["ssl.ca.location"])):
                msg = (f"KAFKA_SSL_CA_LOCATION is {config['ssl.ca.location']}, which librdkafka cannot load as PEM "
                       f"CA certificates ({refused}).")
                raise ConfigurationError(msg)
            if "ssl.certificate.location" in config or "ssl.key.location" in config:
                _check_client_identity(config)
        if protocol.startswith("SASL_") and mechanism is not None and (refused := _refused_mechanism(mechanism)):
            supported = [name for name in SASL_MECHANISMS if not _refused_mechanism(name)]
            msg = (f"KAFKA_SASL_MECHANISM={mechanism} is not available in this librdkafka build ({refused}). "
                   f"Use one of {', '.join(supported)}.")
            raise ConfigurationError(msg)

    def _managed_credentials(self) -> dict[str, Any]:
        # Written by the broker's first secured start (workbench.broker._security), owner-only.
        try:
            return json.loads(self.kafka_credentials_file.read_text())
        except (OSError, ValueError):
            return {}

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
        return type(self)(**data)


#: The managed broker's initial heap (``-Xms256m``), so the least WORKBENCH_KAFKA_HEAP can be.
_MIN_HEAP_BYTES = 256 * 1024**2

#: A legal Kafka topic name (Kafka's own rule).
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _valid_address(item: str) -> bool:
    """``host[:port]`` or ``[ipv6][:port]``, optionally after a ``PROTOCOL://`` prefix (librdkafka accepts both)."""
    address = item.split("://", 1)[1] if "://" in item else item
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?", address)
    return match is not None and (match[2] is None or 1 <= int(match[2]) <= 65535)


def _client_refuses(config: dict[str, str]) -> str | None:
    """librdkafka's reason for refusing to create a client with ``config`` (no broker is contacted), or None.

    Asked of librdkafka itself, so the answer is this build's (its SASL providers) and this
    OpenSSL's (what it parses as a certificate), not a list kept here.
    """
    from confluent_kafka import KafkaException, Producer

    try:
        Producer({**config, "log_level": 0})
    except KafkaException as exc:
        return str(exc.args[0].str() if exc.args else exc).removeprefix("Failed to create producer: ")
    return None


@functools.cache
def _refused_mechanism(mechanism: str) -> str | None:
    """Why this librdkafka build has no ``mechanism`` (GSSAPI needs libsasl2), or None."""
    # a user and password, which PLAIN needs to create a client at all
    return _client_refuses({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
                            "sasl.username": "probe", "sasl.password": "probe"})


def _refused_ca(location: str) -> str | None:
    """Why librdkafka cannot load the CA file or folder ``location`` (not PEM), or None."""
    stat = Path(location).stat()
    return _refused_ca_version(location, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _refused_ca_version(location: str, _mtime_ns: int, _size: int) -> str | None:  # a changed file is asked again
    return _client_refuses({"security.protocol": "SSL", "ssl.ca.location": location})


def _check_client_identity(config: dict[str, Any]) -> None:
    """Refuse a client certificate or key (mutual TLS) librdkafka cannot load, naming the variable and file."""
    cert, key = config.get("ssl.certificate.location"), config.get("ssl.key.location")
    versions = tuple((location, *_file_version(location)) if location else None for location in (cert, key))
    refused = _refused_identity(*versions, config.get("ssl.key.password"))
    if refused is None:
        return
    if "ssl.certificate.location" in refused:
        what = f"KAFKA_SSL_CERTIFICATE_LOCATION is {cert}, which librdkafka cannot load as a PEM certificate"
    elif "ssl.key.location" in refused:
        password = " with KAFKA_SSL_KEY_PASSWORD" if "ssl.key.password" in config else ""
        what = f"KAFKA_SSL_KEY_LOCATION is {key}, which librdkafka cannot load as a PEM private key{password}"
    else:
        what = (f"KAFKA_SSL_CERTIFICATE_LOCATION ({cert}) and KAFKA_SSL_KEY_LOCATION ({key}) are not a "
                "certificate and private key librdkafka can use")
    raise ConfigurationError(f"{what} ({refused}).")


def _file_version(location: str) -> tuple[int, int]:
    stat = Path(location).stat()
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=16)
def _refused_identity(cert: tuple[str, int, int] | None, key: tuple[str, int, int] | None,
                      password: str | None) -> str | None:  # a changed file is asked again
    probe = {"security.protocol": "SSL", "ssl.certificate.location": cert and cert[0],
             "ssl.key.location": key and key[0], "ssl.key.password": password}
    return _client_refuses({name: value for name, value in probe.items() if value is not None})


@contextmanager
def _explained() -> Iterator[None]:
    """Turn pydantic's ValidationError into a ConfigurationError that names each bad setting by its
    environment variable and argument, with the value: a user mistake, not a traceback."""
    try:
        yield
    except ValidationError as exc:
        lines = [_explain_error(error) for error in exc.errors()]
        head = "" if len(lines) == 1 else f"{len(lines)} settings have values the workbench cannot use:\n  "
        raise ConfigurationError(head + "\n  ".join(lines)) from None


def _explain_error(error: Any) -> str:
    key = str(error["loc"][0]) if error["loc"] else ""
    fields = Settings.model_fields
    name = next((field_name for field_name, field in fields.items() if field.validation_alias == key), key)
    if name not in fields:
        return f"Settings has no setting {key!r} (see workbench.config.Settings for the ones it has)."
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])  # the validators below name the setting and the value themselves
    alias = fields[name].validation_alias
    variable = alias if isinstance(alias, str) else f"WORKBENCH_{name.upper()}"
    secret = fields[name].annotation in (SecretStr, SecretStr | None)
    value = "" if secret else f" Got {error['input']!r} instead."
    return f"{variable} (Settings argument {name}): {error['msg']}.{value}"


def get_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit overrides on top (``None`` means "not given")."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
