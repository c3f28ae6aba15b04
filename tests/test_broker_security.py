"""Secured Kafka on the real broker and the real apps: SASL PLAIN, SASL SCRAM-SHA-512, SSL.

One managed broker runs with four listeners (SASL_SSL first, so its own start-up already goes
through the generated SCRAM user and CA the workbench configures for itself; then PLAINTEXT,
SASL_PLAINTEXT and SSL). For each secured way in, the KAFKA_* environment variables a user would
set for an external cluster point the whole pipeline at one listener: a small log is replayed, and
the stream analytics, the scoring app and the anomaly sink must fill their stores. A wrong password
and a missing CA fail at once with an error naming the setting, instead of hanging.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import certifi
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import isolated_settings
from tests.helpers import free_port_pair, make_log, wait_until
from workbench.analysis.persistence import PERSISTENCE_REASON
from workbench.analysis.slower_groups import GROUP_REASONS
from workbench.broker import BrokerAuthenticationError, BrokerError, LocalKafka, ensure_broker, find_java
from workbench.broker._security import ensure_credentials, ensure_key_stores
from workbench.config import Settings
from workbench.data.generator import generate
from workbench.exceptions import ConfigurationError
from workbench.ml._testing import day_slice
from workbench.ml._train import train_day
from workbench.pipeline.analytics import run_analytics
from workbench.pipeline.anomaly_sink import run_anomaly_sink
from workbench.pipeline.scoring import run_scoring
from workbench.replay import Replay
from workbench.runtime import Workbench
from workbench.store.lakehouse import AnomalyLakehouse
from workbench.store.shards import read_shards
from workbench.store.window_stats import WindowStatsStore

pytestmark = pytest.mark.slow

D1, D2 = dt.date(2024, 3, 4), dt.date(2024, 3, 5)  # the generator's first two days
LISTENERS = "SASL_SSL,PLAINTEXT,SASL_PLAINTEXT,SSL"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The broker with every listener, a day-2 log, and a model trained on day 1 (scored offline)."""
    root = tmp_path_factory.mktemp("secured")
    settings = Settings(home=root / "broker", kafka_port=free_port_pair(span=6), kafka_heap="512m",
                        kafka_listeners=LISTENERS)
    broker = LocalKafka(settings)
    day2, trained = root / "day2.parquet", Settings(home=root / "trained")

    def log_and_model() -> None:
        full = root / "full.parquet"
        generate(full, days=2, instances=3, seed=11, rows_per_day=2_500)
        pq.write_table(day_slice(pq.read_table(full), D2), day2)
        train_day(trained, D1, window_days=1, data=full)

    try:
        with ThreadPoolExecutor(1) as pool:  # the log and the model need no broker: made while it starts
            prepared = pool.submit(log_and_model)
            status = broker.start(timeout=120)
            prepared.result()
        yield {"settings": settings, "status": status, "log": day2, "models": trained.models_dir}
    finally:
        # The apps' Kafka clients sit in reference cycles: free them while the broker still runs, or they
        # reconnect to the stopped broker and print to stderr during later tests (test_kernel_logging).
        gc.collect()
        broker.stop()


def _client_env(secured: dict, way: str) -> dict[str, str]:
    """The KAFKA_* variables a user sets to reach one listener (as for a managed cloud cluster)."""
    settings: Settings = secured["settings"]
    ports = settings.kafka_listener_ports
    credentials = json.loads(settings.kafka_credentials_file.read_text())
    sasl = {"KAFKA_SASL_USERNAME": credentials["username"], "KAFKA_SASL_PASSWORD": credentials["password"]}
    if way == "SSL":
        return {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['SSL']}", "KAFKA_SECURITY_PROTOCOL": "SSL",
                "KAFKA_SSL_CA_LOCATION": str(settings.kafka_ca_file)}
    return {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['SASL_PLAINTEXT']}",
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": way, **sasl}


def test_the_managed_broker_secures_its_files_and_configures_its_own_clients(secured: dict) -> None:
    settings: Settings = secured["settings"]
    ports = settings.kafka_listener_ports
    assert list(ports) == LISTENERS.split(",")
    assert ports["SASL_SSL"] == settings.kafka_port and ports["PLAINTEXT"] == settings.kafka_port + 2
    # the workbench's own clients: SCRAM-SHA-512 over TLS with the generated user and CA, no setting needed
    config = settings.kafka_client_config()
    assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["ssl.ca.location"] == str(settings.kafka_ca_file)
    assert "SASL_SSL" in str(secured["status"]) and str(settings.kafka_ca_file) in str(secured["status"])
    # generated secrets are owner-only and stay out of the environment handed to children
    security = settings.kafka_security_dir
    assert stat.S_IMODE(security.stat().st_mode) == 0o700
    for path in security.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((settings.kafka_dir / "server.properties").stat().st_mode) == 0o600
    password = json.loads(settings.kafka_credentials_file.read_text())["password"]
    assert password not in json.dumps(settings.to_env())
    assert password not in str(secured["status"])
    # the running broker keeps its listeners: asking for others says how to change them
    with pytest.raises(BrokerError, match="workbench kafka stop"):
        LocalKafka(settings.with_overrides(kafka_listeners="PLAINTEXT")).start(timeout=10)
    assert LocalKafka(settings).status().running
    # a child process with only the home, port and listeners (as the supervisor starts the apps) gets in
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "WORKBENCH_"))},
           "WORKBENCH_HOME": str(settings.home), "WORKBENCH_KAFKA_PORT": str(settings.kafka_port),
           "WORKBENCH_KAFKA_LISTENERS": settings.kafka_listeners}
    topics = subprocess.run([sys.executable, "-m", "workbench.cli", "topics"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert topics.returncode == 0 and settings.topic_query_events in topics.stdout, topics.stderr[-2000:]
    status = subprocess.run([sys.executable, "-m", "workbench.cli", "kafka", "status"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert status.returncode == 0 and f"SSL 127.0.0.1:{ports['SSL']}" in status.stdout, status.stdout
    assert password not in status.stdout + status.stderr + topics.stdout + topics.stderr
    # `workbench kafka env` prints what another client sets for a listener (the password read from its file)
    lines = subprocess.run([sys.executable, "-m", "workbench.cli", "kafka", "env", "--listener", "sasl_plaintext"],
                           env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    assert password not in lines and f"127.0.0.1:{ports['SASL_PLAINTEXT']}" in lines
    script = f'{lines}\nexec "{sys.executable}" -m workbench.cli --home "{settings.home}/other" topics'
    other = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert other.returncode == 0 and settings.topic_query_events in other.stdout, other.stderr[-2000:]


@pytest.mark.parametrize("way", ["PLAIN", "SCRAM-SHA-512", "SSL"])
def test_the_pipeline_runs_through_a_secured_listener(secured: dict, way: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _client_env(secured, way).items():
        monkeypatch.setenv(name, value)
    settings = isolated_settings(Settings(home=tmp_path / "home"), tmp_path / "home")
    assert settings.security_protocol == ("SSL" if way == "SSL" else "SASL_PLAINTEXT")
    shutil.copytree(secured["models"], settings.models_dir)
    ensure_broker(settings)  # checks the listener answers and creates the topics through it
    Replay(secured["log"], settings=settings, speedup=0, pack=1).run()
    events = pq.read_metadata(secured["log"]).num_rows

    analytics = run_analytics(settings, idle_exit=3, timeout=60, commit_interval=1.0)
    scoring = run_scoring(settings, idle_exit=3, timeout=60, train=False, batch_seconds=0.3)
    sink = run_anomaly_sink(settings, idle_exit=3, timeout=60)

    assert analytics["events"] == scoring["events"] == events
    with WindowStatsStore(settings.sqlite_path, read_only=True) as store:
        windows = store.read()
    assert pc.sum(windows.column("total_queries")).as_py() == events
    shards = read_shards(settings.shards_dir)
    assert shards.num_rows == events and shards.column("model_version").null_count == 0
    flagged = pc.sum(shards.column("is_anomaly").cast(pa.int64())).as_py()
    assert flagged > 0 and scoring["anomalies"] == flagged
    with AnomalyLakehouse.from_settings(settings, read_only=True) as lake:
        rows = lake.read()
    # the sink's rows; the scoring app's deferred step may add runs and queries of a settled day beside them
    from_sink = pc.fill_null(pc.invert(pc.is_in(rows.column("reason"), pa.array([PERSISTENCE_REASON, *GROUP_REASONS]))),
                             True)
    assert rows.filter(from_sink).num_rows == flagged == sink["sink_rows"]


@pytest.mark.parametrize(("way", "change", "named"), [
    ("SCRAM-SHA-512", {"KAFKA_SASL_PASSWORD": "not-the-password"}, "KAFKA_SASL_PASSWORD"),
    ("PLAIN", {"KAFKA_SASL_USERNAME": "nobody"}, "KAFKA_SASL_USERNAME"),
    ("SSL", {"KAFKA_SSL_CA_LOCATION": ""}, "KAFKA_SSL_CA_LOCATION"),
])
def test_wrong_credentials_fail_fast_naming_the_setting(secured: dict, way: str, change: dict, named: str,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**_client_env(secured, way), **change}.items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    settings = Settings(home=tmp_path / "home")
    started = time.monotonic()
    with pytest.raises(BrokerAuthenticationError, match=named):
        ensure_broker(settings, timeout=300)
    # a rejected credential is final: it is reported at once, not after the 300 s of waiting for a broker
    assert time.monotonic() - started < 150
    if way == "SCRAM-SHA-512":
        # `workbench topics` blamed "Broker transport failure" and `replay-control status` a broker "down or
        # unreachable" (tester B, 33rd session): both name the credentials now
        from workbench.broker import ensure_topics
        from workbench.replay import ReplayController

        with pytest.raises(BrokerAuthenticationError, match=named):
            ensure_topics(settings, timeout=10)
        with pytest.raises(BrokerAuthenticationError, match=named):
            ReplayController(settings).status(timeout=5)


@pytest.mark.parametrize("tool", ["openssl", "keytool"])
def test_both_certificate_makers_give_a_broker_certificate_the_ca_verifies(tool: str, tmp_path: Path) -> None:
    """The broker above used openssl; keytool (the fallback where openssl is missing) must make the same
    kind of key store: a broker certificate for 127.0.0.1/localhost signed by ca.pem, the CA key gone."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the check reads the key store with the openssl command, which is not installed")
    settings = Settings(home=tmp_path / "home", kafka_listeners="SSL")
    credentials = ensure_credentials(settings)
    folder = ensure_key_stores(settings, find_java(), credentials, tool=tool)
    assert sorted(p.name for p in folder.iterdir()) == ["broker.p12", "ca.pem", "credentials.json"]
    pem = subprocess.run([openssl, "pkcs12", "-in", str(folder / "broker.p12"), "-nokeys", "-clcerts",
                          "-passin", f"pass:{credentials.store_password}"], capture_output=True, text=True, check=True)
    (tmp_path / "broker.pem").write_text(pem.stdout)
    verify = subprocess.run([openssl, "verify", "-CAfile", str(folder / "ca.pem"), str(tmp_path / "broker.pem")],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    text = subprocess.run([openssl, "x509", "-in", str(tmp_path / "broker.pem"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text
    # made once: a second call reuses the files
    before = (folder / "ca.pem").read_bytes()
    ensure_key_stores(settings, find_java(), credentials, tool=tool)
    assert (folder / "ca.pem").read_bytes() == before


def _client_identity(folder: Path, password: str) -> None:
    """A client certificate ``c.pem`` and its key ``k.pem`` (encrypted with ``password``), as PEM."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the client certificate is made with the openssl command, which is not installed")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-keyout", "k.pem", "-out", "c.pem", "-days", "2",
                    "-subj", "/CN=client", "-passout", f"pass:{password}"], cwd=folder, check=True, capture_output=True)


def test_client_settings_map_to_librdkafka_and_bad_values_are_refused(tmp_path: Path) -> None:
    _client_identity(tmp_path, "kp")  # librdkafka must load the certificate and key (PEM) ...
    shutil.copy(certifi.where(), tmp_path / "ca.pem")  # ... and the CA file
    settings = Settings(home=tmp_path, kafka_bootstrap_servers="broker.example:9096",
                        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="scram-sha-256",
                        kafka_sasl_username="u", kafka_sasl_password="pw",
                        kafka_ssl_ca_location=tmp_path / "ca.pem", kafka_ssl_certificate_location=tmp_path / "c.pem",
                        kafka_ssl_key_location=tmp_path / "k.pem", kafka_ssl_key_password="kp",
                        kafka_ssl_endpoint_identification_algorithm="none")
    assert settings.kafka_client_config() == {
        "bootstrap.servers": "broker.example:9096", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "u", "sasl.password": "pw", "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.certificate.location": str(tmp_path / "c.pem"), "ssl.key.location": str(tmp_path / "k.pem"),
        "ssl.key.password": "kp", "ssl.endpoint.identification.algorithm": "none"}
    env = settings.to_env(include_secrets=False)
    assert "pw" not in env.values() and "kp" not in env.values()
    assert sorted(settings.secret_env_names()) == ["KAFKA_SASL_PASSWORD", "KAFKA_SSL_KEY_PASSWORD"]
    assert Settings.from_env(settings.to_env()).kafka_client_config() == settings.kafka_client_config()
    # an external cluster with nothing set stays PLAINTEXT; the managed broker's first listener decides otherwise
    assert Settings(home=tmp_path, kafka_bootstrap_servers="b:9092").security_protocol == "PLAINTEXT"
    assert Settings(home=tmp_path, kafka_ssl_ca_location="", kafka_sasl_mechanism="").kafka_ssl_ca_location is None
    assert Settings(home=tmp_path, kafka_security_protocol="sasl_ssl").security_protocol == "SASL_SSL"
    assert Settings(home=tmp_path, kafka_listeners=" ssl , plaintext").kafka_listeners == "SSL,PLAINTEXT"
    with pytest.raises(ValueError, match="WORKBENCH_KAFKA_LISTENERS"):
        Settings(home=tmp_path, kafka_listeners="plaintext,tls")
    with pytest.raises(ValueError, match="WORKBENCH_KAFKA_LISTENERS"):
        Settings(home=tmp_path, kafka_listeners="ssl,SSL")
    with pytest.raises(ValueError, match="KAFKA_SASL_MECHANISM"):
        Settings(home=tmp_path, kafka_sasl_mechanism="SCRAM-SHA-1")


def test_a_client_certificate_or_key_that_is_not_pem_is_refused_in_one_line_naming_it(tmp_path: Path) -> None:
    """As a CA file that is not PEM already was: before, the first client's KafkaException was a traceback."""
    _client_identity(tmp_path, "kp")
    (tmp_path / "not-pem.txt").write_text("not a certificate\n")
    shutil.copy(certifi.where(), tmp_path / "ca.pem")
    good = {"kafka_ssl_certificate_location": tmp_path / "c.pem", "kafka_ssl_key_location": tmp_path / "k.pem",
            "kafka_ssl_key_password": "kp"}
    cases = {
        "a certificate that is not PEM": ({**good, "kafka_ssl_certificate_location": tmp_path / "not-pem.txt"},
                                          f"KAFKA_SSL_CERTIFICATE_LOCATION is {tmp_path / 'not-pem.txt'}, which "
                                          "librdkafka cannot load as a PEM certificate ("),
        "a key that is not PEM": ({**good, "kafka_ssl_key_location": tmp_path / "not-pem.txt"},
                                  f"KAFKA_SSL_KEY_LOCATION is {tmp_path / 'not-pem.txt'}, which librdkafka cannot "
                                  "load as a PEM private key with KAFKA_SSL_KEY_PASSWORD ("),
        "the key alone": ({"kafka_ssl_key_location": tmp_path / "not-pem.txt"},
                          f"KAFKA_SSL_KEY_LOCATION is {tmp_path / 'not-pem.txt'}, which librdkafka cannot load as a "
                          "PEM private key ("),
        "the key's password wrong": ({**good, "kafka_ssl_key_password": "nope"},
                                     f"KAFKA_SSL_KEY_LOCATION is {tmp_path / 'k.pem'}, which librdkafka cannot load "
                                     "as a PEM private key with KAFKA_SSL_KEY_PASSWORD ("),
    }
    for case, (files, message) in cases.items():
        settings = Settings(home=tmp_path, kafka_bootstrap_servers="broker.example:9093", kafka_security_protocol="SSL",
                            kafka_ssl_ca_location=tmp_path / "ca.pem", **files)
        with pytest.raises(ConfigurationError) as info:
            settings.kafka_client_config()
        text = str(info.value)
        assert text.startswith(message) and text.endswith(").") and "\n" not in text, (case, text)
    settings = Settings(home=tmp_path, kafka_bootstrap_servers="broker.example:9093", kafka_security_protocol="SSL",
                        kafka_ssl_ca_location=tmp_path / "ca.pem", **good)
    assert settings.kafka_client_config()["ssl.certificate.location"] == str(tmp_path / "c.pem")
    # the CLI: one line on stderr, no traceback
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "WORKBENCH_"))},
           **settings.to_env(), "KAFKA_SSL_CERTIFICATE_LOCATION": str(tmp_path / "not-pem.txt"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "topics"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("workbench: error: KAFKA_SSL_CERTIFICATE_LOCATION is "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_an_app_with_a_wrong_password_exits_naming_the_setting(secured: dict, tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "WORKBENCH_"))},
           **_client_env(secured, "SCRAM-SHA-512"), "KAFKA_SASL_PASSWORD": "not-the-password",
           "WORKBENCH_HOME": str(tmp_path / "home")}
    app = subprocess.run([sys.executable, "-m", "workbench.cli", "app", "analytics", "--timeout", "120"], env=env,
                         capture_output=True, text=True, timeout=110, check=False)
    assert app.returncode == 2 and "KAFKA_SASL_PASSWORD" in app.stderr, app.stderr[-2000:]
    assert "not-the-password" not in app.stderr + app.stdout


def test_the_runtime_authenticates_itself_to_its_secured_broker(secured: dict, tmp_path: Path) -> None:
    """`Workbench.start` on the managed broker whose first listener is SASL_SSL: the supervisor, the
    replay and the app find the generated user and CA through the home alone; no secret in spec or logs."""
    base: Settings = secured["settings"]
    suffix = tmp_path.name[-8:]
    settings = base.with_overrides(topic_query_events=f"q.{suffix}", topic_anomalies=f"a.{suffix}",
                                   topic_dead_letter=f"d.{suffix}", topic_replay_control=f"c.{suffix}",
                                   topic_replay_state=f"s.{suffix}")
    log = make_log(tmp_path / "log.parquet", rows=3000)
    wb = Workbench.start(data=log, speedup=0, settings=settings, apps=("analytics",))
    try:
        done = wait_until(lambda: (s := wb.status()).drained and s, timeout=240, poll=1.0, what="drained")
        assert done.rows_sent == 3000 and done.lag == {"analytics": 0}
        assert int(wb.window_stats()["total_queries"].sum()) == 3000
    finally:
        wb.stop(kafka=False)
    password = json.loads(settings.kafka_credentials_file.read_text())["password"]
    spec = (settings.home / "run" / "spec.json").read_text()
    assert "WORKBENCH_KAFKA_LISTENERS" in spec and password not in spec
    logs = [p for p in settings.logs_dir.rglob("*") if p.is_file()]
    assert logs and not [p for p in logs if password in p.read_text(errors="replace")]


def test_a_broken_connection_during_the_handshake_is_not_taken_for_a_rejected_credential(tmp_path: Path) -> None:
    from confluent_kafka import KafkaError

    from workbench.broker._local import _security_hint

    sasl = Settings(home=tmp_path, kafka_bootstrap_servers="b:9094", kafka_security_protocol="SASL_SSL")
    transient = KafkaError(KafkaError._AUTHENTICATION, "GroupCoordinator: SASL authentication error: "
                           "SaslAuthenticateRequest failed: Local: Broker transport failure (after 0ms in state DOWN)")
    assert _security_hint(sasl, transient) is None
    rejected = KafkaError(KafkaError._AUTHENTICATION, "b:9094/bootstrap: SASL authentication error: Authentication "
                          "failed: Invalid username or password (after 301ms in state AUTH_REQ)")
    assert "KAFKA_SASL_PASSWORD" in (_security_hint(sasl, rejected) or "")
    untrusted = KafkaError(KafkaError._SSL, "b:9094/bootstrap: SSL handshake failed: error:0A000086:SSL routines::"
                           "certificate verify failed: broker certificate could not be verified")
    assert "KAFKA_SSL_CA_LOCATION" in (_security_hint(sasl, untrusted) or "")
