"""Settings: a bad value is a ConfigurationError naming the setting and the value, never a pydantic
traceback; empty variables mean "unset"; addresses, topic names, heap sizes and folders are checked
when the settings are read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.config import Settings, _default_home
from workbench.exceptions import ConfigurationError

#: Every variable with a type or range, and a value it rejects.
BAD_VALUES = [
    ("WORKBENCH_KAFKA_PORT", "abc"),
    ("WORKBENCH_KAFKA_PORT", "0"),
    ("WORKBENCH_KAFKA_PORT", "70000"),
    ("WORKBENCH_PARTITIONS", "four"),
    ("WORKBENCH_PARTITIONS", "0"),
    ("WORKBENCH_RETENTION_BYTES", "1k"),
    ("WORKBENCH_SHARD_RETENTION_DAYS", "x"),
    ("WORKBENCH_EVENT_TIME_MIN", "yesterday"),
    ("WORKBENCH_EVENT_TIME_MAX", "2100-13-01"),
    ("WORKBENCH_EVENT_TIME_HORIZON_S", "-1"),
    ("WORKBENCH_EVENT_TIME_PAST_HORIZON_S", "a year"),
    ("WORKBENCH_WINDOW_CLOCK_MESSAGES", "0"),
    ("WORKBENCH_WINDOW_CLOCK_MESSAGES", "2.5"),
    ("WORKBENCH_TRAINER_ELECTION", "zookeeper"),
    ("KAFKA_SECURITY_PROTOCOL", "TLS"),
    ("KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "strict"),
    ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-1"),
    ("WORKBENCH_KAFKA_LISTENERS", "PLAINTEXT,TLS"),
    ("WORKBENCH_KAFKA_HEAP", "lots"),
    ("WORKBENCH_KAFKA_HEAP", "64m"),  # below the broker's -Xms256m: the JVM would not start
    ("WORKBENCH_TOPIC_ANOMALIES", "anomalies and more"),
    ("WORKBENCH_TOPIC_QUERY_EVENTS", "events/2024"),
    ("WORKBENCH_CONSUMER_GROUP_PREFIX", "team a"),
    ("KAFKA_BOOTSTRAP_SERVERS", "::::"),
    ("KAFKA_BOOTSTRAP_SERVERS", "broker:notaport"),
    ("KAFKA_BOOTSTRAP_SERVERS", "broker:9092,broker:99999"),
    ("WORKBENCH_LAKEHOUSE_CATALOG", "mysql:lake"),
    ("WORKBENCH_WINDOW_STATS_URL", "db.internal/stats"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_a_bad_variable_is_a_configuration_error_naming_it_and_its_value(
        variable: str, value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        Settings(home=tmp_path)
    message = str(caught.value)
    assert variable in message
    assert value[:14] in message  # (a URL is cut short: it may hold a password)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no pydantic chain


def test_arguments_are_explained_with_their_variable_and_every_problem_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(home=tmp_path, kafka_port="x", partitions=-3, colour="blue")
    message = str(caught.value)
    assert message.startswith("3 settings have values the workbench cannot use")
    assert "WORKBENCH_KAFKA_PORT (Settings argument kafka_port)" in message and "Got 'x'" in message
    assert "WORKBENCH_PARTITIONS (Settings argument partitions)" in message and "Got -3" in message
    assert "no setting 'colour'" in message
    with pytest.raises(ConfigurationError, match=r"WORKBENCH_PARTITIONS .*Got 0 instead"):
        Settings(home=tmp_path).with_overrides(partitions=0)


def test_a_secret_is_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(home=tmp_path, kafka_sasl_password=12345)
    assert "KAFKA_SASL_PASSWORD" in str(caught.value)
    assert "12345" not in str(caught.value)


def test_empty_variables_mean_unset_not_the_current_directory(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for variable in ("WORKBENCH_HOME", "WORKBENCH_REPORTS_DIR", "WORKBENCH_MODELS_DIR", "WORKBENCH_ARCHIVE_DIR",
                     "WORKBENCH_SHARDS_DIR", "WORKBENCH_LAKEHOUSE_DATA", "WORKBENCH_WINDOW_STATS_URL",
                     "WORKBENCH_SHARD_RETENTION_DAYS", "KAFKA_BOOTSTRAP_SERVERS",
                     "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM"):
        monkeypatch.setenv(variable, "")
    settings = Settings()
    assert settings.home == _default_home().resolve()
    assert settings.resolved_reports_dir == settings.home / "reports"
    assert settings.models_dir == settings.home / "models"
    assert settings.shards_dir == settings.home / "shards"
    assert settings.lakehouse_data_path == f"{settings.home / 'lakehouse' / 'data'}/"
    assert settings.manages_kafka and settings.shard_retention_days is None


def test_every_variable_set_empty_gives_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    names = [f.validation_alias if isinstance(f.validation_alias, str) else f"WORKBENCH_{n.upper()}"
             for n, f in Settings.model_fields.items()]
    for variable in names:
        monkeypatch.delenv(variable, raising=False)
    defaults = Settings().model_dump()
    for variable in names:  # ports, topics, sizes, paths, Kafka names: blank is "not set", never an error
        monkeypatch.setenv(variable, "")
    assert Settings().model_dump() == defaults
    assert len(names) > 30 and "WORKBENCH_KAFKA_PORT" in names and "KAFKA_BOOTSTRAP_SERVERS" in names


def test_an_empty_sasl_user_or_password_is_unset_and_named_not_a_librdkafka_traceback(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable, value in (("KAFKA_BOOTSTRAP_SERVERS", "broker.example:9096"), ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                            ("KAFKA_SASL_MECHANISM", "PLAIN"), ("KAFKA_SASL_USERNAME", ""),
                            ("KAFKA_SASL_PASSWORD", ""), ("KAFKA_SSL_KEY_PASSWORD", "")):
        monkeypatch.setenv(variable, value)
    settings = Settings(home=tmp_path)
    assert settings.kafka_sasl_username is None and settings.kafka_sasl_password is None
    assert settings.kafka_ssl_key_password is None
    with pytest.raises(ConfigurationError, match="but KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are not set"):
        settings.kafka_client_config()


def test_bootstrap_servers_in_every_form_librdkafka_takes(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, kafka_bootstrap_servers=" b-1.example.com:9092, [::1]:9093,SASL_SSL://b2:9094,b3")
    assert settings.bootstrap_servers == "b-1.example.com:9092,[::1]:9093,SASL_SSL://b2:9094,b3"
    assert Settings(home=tmp_path, kafka_bootstrap_servers="b1:9092, ").bootstrap_servers == "b1:9092"  # a stray comma
    # only commas would have joined to "", which means the local Kafka: a cluster the user named silently ignored
    with pytest.raises(ConfigurationError, match=r"KAFKA_BOOTSTRAP_SERVERS names no broker \(got ' , '\)"):
        Settings(home=tmp_path, kafka_bootstrap_servers=" , ")
    assert Settings(home=tmp_path, kafka_ssl_endpoint_identification_algorithm="NONE") \
        .kafka_client_config()["ssl.endpoint.identification.algorithm"] == "none"


def test_a_file_where_a_folder_goes_names_the_setting(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(ConfigurationError, match=f"WORKBENCH_HOME must be a folder, but {a_file} is a file"):
        Settings(home=a_file)
    with pytest.raises(ConfigurationError, match=f"WORKBENCH_MODELS_DIR must be a folder, .* under {a_file}, which"):
        Settings(home=tmp_path, models_dir_override=a_file / "models")
    for variable, argument in (("WORKBENCH_SHARDS_DIR", "shards_dir_override"),
                               ("WORKBENCH_LAKEHOUSE_DATA", "lakehouse_data")):
        with pytest.raises(ConfigurationError, match=f"{variable} must be a folder, but {a_file} is a file"):
            Settings(home=tmp_path, **{argument: str(a_file)})
        assert Settings(home=tmp_path, **{argument: "s3://bucket/prefix/"})  # a URL is not a local folder
    spaced = tmp_path / "a home with spaces/ünïcode"
    assert Settings(home=spaced).home == spaced  # any folder name works, created or not


def test_the_cli_prints_one_line_naming_the_setting_and_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "WORKBENCH_HOME": str(tmp_path), "WORKBENCH_PARTITIONS": "four",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "status"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "workbench: error: WORKBENCH_PARTITIONS (Settings argument partitions): Input should be a valid integer, "
        "unable to parse string as an integer. Got 'four' instead."]


def test_client_settings_librdkafka_would_refuse_name_the_setting(tmp_path: Path) -> None:
    external = {"home": tmp_path, "kafka_bootstrap_servers": "broker.example:9096"}
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"0\x82\x01\x0a not a PEM file")
    cases = [
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "u"},
         "KAFKA_SASL_MECHANISM=PLAIN needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD, but KAFKA_SASL_PASSWORD is"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-512"},
         "but KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are not set"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u", "kafka_sasl_password": "p"},
         "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_MECHANISM"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_ca_location": tmp_path / "missing-ca.pem"},
         f"KAFKA_SSL_CA_LOCATION is {tmp_path / 'missing-ca.pem'}, which does not exist"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_key_location": tmp_path / "k.pem"}, "KAFKA_SSL_KEY_LOCATION"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI"},
         r"KAFKA_SASL_MECHANISM=GSSAPI is not available in this librdkafka build \(No provider for SASL mechanism "
         r"GSSAPI.*\)\. Use one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER\."),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_ca_location": not_pem},
         rf"KAFKA_SSL_CA_LOCATION is {not_pem}, which librdkafka cannot load as PEM CA certificates "
         r"\(ssl.ca.location "),
    ]
    for values, message in cases:
        settings = Settings(**external, **values)
        with pytest.raises(ConfigurationError, match=message):
            settings.kafka_client_config()
    # the managed broker's own secured listener needs none of them (its generated user and CA)
    assert Settings(home=tmp_path, kafka_security_protocol="SASL_SSL").kafka_client_config()["sasl.mechanism"] \
        == "SCRAM-SHA-512"
    # a CA folder is what librdkafka takes too
    assert Settings(**external, kafka_security_protocol="SSL", kafka_ssl_ca_location=tmp_path) \
        .kafka_client_config()["ssl.ca.location"] == str(tmp_path)


@pytest.mark.parametrize(("env", "message"), [
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI"},
     "workbench: error: KAFKA_SASL_MECHANISM=GSSAPI is not available in this librdkafka build"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": "{not_pem}"},
     "workbench: error: KAFKA_SSL_CA_LOCATION is {not_pem}, which librdkafka cannot load as PEM CA certificates"),
])
def test_a_client_setting_librdkafka_refuses_is_one_line(tmp_path: Path, env: dict[str, str], message: str) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("a CA file that is not PEM\n")
    env = {**os.environ, "WORKBENCH_HOME": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           **{name: value.format(not_pem=not_pem) for name, value in env.items()}}
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "topics"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(not_pem=not_pem)), done.stderr


def test_an_app_with_a_missing_password_exits_at_once_naming_it(tmp_path: Path) -> None:
    env = {**os.environ, "WORKBENCH_HOME": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("KAFKA_SASL_PASSWORD", None)
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "app", "analytics"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "but KAFKA_SASL_PASSWORD is not set" in done.stderr


@pytest.fixture
def unwritable_home(tmp_path: Path) -> Path:
    """A home the workbench cannot create: under a read-only folder, or (root ignores permission bits)
    under /sys, where mkdir is refused to everyone."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):
        return locked / "home"
    if not Path("/sys/kernel").is_dir():
        pytest.skip("needs a folder this user cannot write")
    return Path("/sys/kernel/workbench-test-home")


def test_an_unwritable_home_is_one_line_from_every_command(unwritable_home: Path) -> None:
    from tests.helpers import free_port_pair

    env = {**os.environ, "WORKBENCH_HOME": str(unwritable_home), "WORKBENCH_KAFKA_PORT": str(free_port_pair()),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    for command in (["start"], ["kafka", "start"]):  # the API's own check; the broker's first mkdir
        done = subprocess.run([sys.executable, "-m", "workbench.cli", *command], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert str(unwritable_home) in done.stderr and "WORKBENCH_HOME" in done.stderr, done.stderr


def test_starting_in_an_unwritable_home_names_it(unwritable_home: Path) -> None:
    from workbench.runtime import Workbench

    with pytest.raises(ConfigurationError, match=f"WORKBENCH_HOME {unwritable_home} cannot be created or written"):
        Workbench.start(settings=Settings(home=unwritable_home, kafka_bootstrap_servers="127.0.0.1:1"))


def test_training_into_an_unwritable_registry_fails_before_it_reads_or_fits(unwritable_home: Path,
                                                                              tmp_path: Path) -> None:
    from tests.helpers import make_log

    log = make_log(tmp_path / "log.parquet", rows=3000, spacing_s=60.0)  # two days: enough to fit
    env = {**os.environ, "WORKBENCH_HOME": str(unwritable_home), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "train", "--day", "2024-03-05", "--data", str(log)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"The model registry {unwritable_home / 'models'} cannot be created or written" in done.stderr
    assert "WORKBENCH_MODELS_DIR" in done.stderr
    assert "training window loaded" not in done.stderr  # refused before the window was read, let alone fitted


def test_a_reader_that_went_away_stops_the_cli_quietly(tmp_path: Path) -> None:
    """`workbench models list | head -0`: no traceback, the shell's code for a closed pipe."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: the write fails at once
    try:
        done = subprocess.run([sys.executable, "-m", "workbench.cli", "models", "list"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60,
                              env={**os.environ, "WORKBENCH_HOME": str(tmp_path / "home")})
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == 141


def test_the_consumer_group_prefix_names_every_apps_group_and_reaches_child_processes(tmp_path: Path) -> None:
    from workbench.pipeline._names import consumer_group

    assert consumer_group(Settings(home=tmp_path), "scoring") == "workbench-scoring"  # the default is unchanged
    settings = Settings(home=tmp_path, consumer_group_prefix="team-b")
    assert [consumer_group(settings, app) for app in ("scoring", "analytics", "anomaly-sink")] == [
        "team-b-scoring", "team-b-analytics", "team-b-anomaly-sink"]
    child = Settings.from_env(settings.to_env())
    assert consumer_group(child, "analytics") == "team-b-analytics"


def test_the_apps_session_timeout_outlives_a_clusters_coordinator_failover(tmp_path: Path) -> None:
    """Tester A, 34th session: 6 s, hard-coded, dropped every member of a group whose coordinator broker died
    (declared dead after 9 s). 15 s on a cluster; the managed broker keeps 6 s; settable within Kafka's bounds."""
    from workbench.pipeline._app import build_application

    assert Settings(home=tmp_path).session_timeout_ms == 6_000
    cluster = Settings(home=tmp_path, kafka_bootstrap_servers="broker-1:9092,broker-2:9092")
    assert cluster.session_timeout_ms == 15_000
    assert Settings(home=tmp_path, kafka_session_timeout_ms=30_000).session_timeout_ms == 30_000
    with pytest.raises(ConfigurationError, match="WORKBENCH_SESSION_TIMEOUT_MS .*greater than or equal to 6000"):
        Settings(home=tmp_path, kafka_session_timeout_ms=1_000)  # below the broker's group.min.session.timeout.ms
    app = build_application(cluster, "analytics", use_changelog_topics=False)
    assert app.config.consumer_extra_config["session.timeout.ms"] == 15_000
