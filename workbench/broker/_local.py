"""A single-node Apache Kafka (KRaft) on 127.0.0.1 that the workbench starts and stops itself.

Its listeners are WORKBENCH_KAFKA_LISTENERS (PLAINTEXT by default; SASL_PLAINTEXT, SSL and SASL_SSL
with the generated user and CA of :mod:`workbench.broker._security`), the first on
WORKBENCH_KAFKA_PORT, the controller on the next port, the others after it.

Storage, configuration, pid file and logs live under ``<WORKBENCH_HOME>/kafka`` and
``<WORKBENCH_HOME>/logs/kafka.log``; the jars come from the user's cache. The broker is a
detached process, so it outlives the Python process that started it until ``stop()``.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException

from workbench import defaults
from workbench._fs import pid_alive, read_pid_file, write_pid_file
from workbench._lifeline import HOME_ENV, ROLE_ENV, tags
from workbench.broker._runtime import ensure_kafka_jars, find_java, java_env, java_properties
from workbench.broker._security import (
    ManagedCredentials,
    ensure_credentials,
    ensure_key_stores,
    register_scram,
    server_properties,
)
from workbench.broker._topics import NO_LIMIT_MS
from workbench.broker.exceptions import (
    BrokerAuthenticationError,
    BrokerError,
    BrokerUnavailableError,
    PortInUseError,
)
from workbench.config import KAFKA_VERSION, Settings

__all__ = ["BrokerStatus", "LocalKafka", "raise_if_login_refused", "wait_for_broker"]

logger = logging.getLogger(__name__)

_OWNER_ONLY = 0o077


@dataclass(frozen=True)
class BrokerStatus:
    """What ``workbench kafka status`` reports."""

    bootstrap_servers: str
    managed: bool
    running: bool
    pid: int | None = None
    log_file: Path | None = None
    brokers: int | None = None
    listeners: str | None = None  # managed broker: every listener and where its credentials are

    def __str__(self) -> str:
        where = "managed local Kafka" if self.managed else "external cluster"
        state = "running" if self.running else "not running"
        extra = f", pid {self.pid}" if self.pid else ""
        log = f", log {self.log_file}" if self.log_file and self.managed else ""
        listeners = f"; listeners: {self.listeners}" if self.listeners and self.managed else ""
        return f"{where} at {self.bootstrap_servers}: {state}{extra}{log}{listeners}"


def _port_free(port: int) -> bool:
    """No program listens on ``port`` (a connection attempt is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _workbench_kafka_on(port: int) -> tuple[str, int] | None:
    """(home, pid) of a workbench-managed Kafka listening on ``port`` (its process tags say its home), or None.

    Two homes with the same WORKBENCH_KAFKA_PORT: the second cannot start its broker, and "stop the
    program using it" does not tell the user that the program is their own other workbench.
    """
    import psutil

    for proc in psutil.process_iter(["pid"]):
        try:
            env = proc.environ()
            if env.get(ROLE_ENV) != "kafka" or not env.get(HOME_ENV):
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in proc.net_connections(kind="tcp")):
                return env[HOME_ENV], proc.pid
        except (psutil.Error, OSError):
            continue
    return None


def _security_hint(settings: Settings, error: KafkaError) -> str | None:
    """What to fix when ``error`` is an authentication or TLS failure, naming the settings; else None."""
    from confluent_kafka import KafkaError

    text = error.str()
    lower = text.lower()
    protocol = settings.security_protocol
    # a connection that broke during the handshake (a broker restarting) is not a rejection
    transient = any(word in lower for word in ("transport failure", "timed out", "connection refused",
                                                "connection reset"))
    if error.code() == KafkaError._AUTHENTICATION and "SASL" in text.upper() and not transient:
        names = "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SASL_MECHANISM and KAFKA_SECURITY_PROTOCOL"
        managed = (f" (the local Kafka's generated user is in {settings.kafka_credentials_file})"
                   if settings.manages_kafka else "")
        return f"SASL authentication failed at {settings.bootstrap_servers}: check {names}{managed}. Kafka said: {text}"
    tls_rejected = "certificate" in lower or "plaintext broker listener" in lower or (
        error.code() == KafkaError._SSL and not transient and "disconnected" not in lower)
    if protocol.endswith("SSL") and tls_rejected:
        return (f"TLS connection to {settings.bootstrap_servers} failed: check KAFKA_SSL_CA_LOCATION (the CA that "
                "signed the brokers' certificates; unset: the system's CAs), KAFKA_SSL_ENDPOINT_IDENTIFICATION_"
                f"ALGORITHM and KAFKA_SECURITY_PROTOCOL ({protocol}). Kafka said: {text}")
    return None


#: Seconds between the "still waiting" lines of a broker probe.
_WAIT_NOTICE_S = 10.0


class _LastReason(logging.Handler):
    """Keeps librdkafka's latest connection failure as text: it says *why* (no such host, connection
    refused, not a Kafka broker), where the client's exception only says "broker transport failure"."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.text: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().rsplit("]: ", 1)[-1]
        if "APIVERSION_QUERY" in text and "timed out" in text:
            text += " (something accepts connections there but does not answer as a Kafka broker)"
        self.text = text


def _probe(settings: Settings, deadline: float, auth_retries: bool) -> tuple[int | None, list[str], str | None]:
    """Metadata requests until one answers, a credential is rejected (unless ``auth_retries``) or the
    deadline passes: (brokers or None, security error messages, last error text).

    The client lives only in this frame and errors leave it as text, so nothing that outlives the
    call (an exception's traceback kept by a caller) keeps the client alive, reconnecting and
    logging to stderr long after.
    """
    from confluent_kafka.admin import AdminClient

    security_errors: list[str] = []

    def on_error(error: KafkaError) -> None:
        if (hint := _security_hint(settings, error)) is not None:
            security_errors.append(hint)

    # The probe expects "connection refused" until the broker is up: librdkafka's lines go to a private
    # logger (never printed) that keeps the last one for the waiting notices and the error.
    reason = _LastReason()
    client_log = logging.Logger("workbench.broker.probe")
    client_log.addHandler(reason)
    admin = AdminClient({**settings.kafka_client_config(), "socket.connection.setup.timeout.ms": 2000,
                         "logger": client_log, "error_cb": on_error})
    last_error: str | None = None
    started = time.monotonic()
    next_notice = started + _WAIT_NOTICE_S
    while time.monotonic() < deadline:
        if (now := time.monotonic()) >= next_notice:  # a silent minute looks like a hang
            logger.warning("still waiting for a Kafka broker at %s (%.0f s of %.0f s)%s",
                           settings.bootstrap_servers, now - started, deadline - started,
                           f"; last error: {last_error}" if last_error else "")
            next_notice = now + _WAIT_NOTICE_S
        try:
            metadata = admin.list_topics(timeout=min(2.0, max(0.5, deadline - time.monotonic())))
            if metadata.brokers:
                return len(metadata.brokers), security_errors, None
        except KafkaException as exc:
            last_error = str(exc)
            if exc.args and isinstance(exc.args[0], KafkaError):
                on_error(exc.args[0])
        except Exception as exc:
            last_error = str(exc)
        admin.poll(0)  # serves error_cb and the logger
        last_error = reason.text or last_error
        if security_errors and not auth_retries:
            break
        time.sleep(0.25)
    return None, security_errors, last_error


def wait_for_broker(settings: Settings, timeout: float = 60.0, *, auth_retries: bool = False) -> int:
    """Block until the broker answers a metadata request; return the number of brokers.

    A rejected password or certificate is not retried (it will not get better): it raises
    :class:`BrokerAuthenticationError` at once, naming the settings to check. ``auth_retries``
    retries it until ``timeout`` instead (a user just stored in the cluster needs a moment).
    """
    if not settings.manages_kafka:
        _refuse_unresolvable(settings.bootstrap_servers)
    brokers, security_errors, last_error = _probe(settings, time.monotonic() + timeout, auth_retries)
    if brokers is not None:
        return brokers
    if security_errors:
        raise BrokerAuthenticationError(security_errors[-1])
    msg = (
        f"No Kafka broker answered at {settings.bootstrap_servers} within {timeout:.0f} s"
        + (f" (last error: {last_error})" if last_error else "")
        + (". Check `workbench kafka status` and the broker log." if settings.manages_kafka else
           ". Check KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL and that the cluster is reachable.")
    )
    raise BrokerUnavailableError(msg)


def raise_if_login_refused(settings: Settings, timeout: float = 3.0) -> None:
    """Raise :class:`BrokerAuthenticationError` when the broker answers but refuses the credentials.

    For the failure paths of reads that cannot tell a refused login from a broker that is away
    (``list_topics`` said "Broker transport failure" after 30 s, a state read "down or unreachable"):
    a broker merely away costs ``timeout`` more and raises nothing here.
    """
    if str(settings.kafka_client_config().get("security.protocol", "PLAINTEXT")).upper() == "PLAINTEXT":
        return  # no credentials to refuse
    try:
        wait_for_broker(settings, timeout=timeout)
    except BrokerAuthenticationError:
        raise
    except Exception:  # away, or anything else: the caller's own error says it
        return


def _refuse_unresolvable(servers: str) -> None:
    """Raise :class:`BrokerUnavailableError` at once when no host of ``servers`` resolves: a typo in
    KAFKA_BOOTSTRAP_SERVERS would otherwise be waited on for the whole deadline, warning all along."""
    hosts = [item.strip().rsplit(":", 1)[0].strip("[]") for item in servers.split(",") if item.strip()]
    failures = []
    for host in hosts:
        try:
            socket.getaddrinfo(host, None)
            return
        except (socket.gaierror, UnicodeError) as exc:
            failures.append(f"{host!r}: {exc}")
    if failures:
        msg = (f"No host of KAFKA_BOOTSTRAP_SERVERS={servers!r} resolves ({'; '.join(failures)}). Check the "
               "host names (host:port, comma-separated).")
        raise BrokerUnavailableError(msg)


class LocalKafka:
    """The workbench-managed single-node Kafka.

    Parameters
    ----------
    settings : Settings
        Supplies the port (``WORKBENCH_KAFKA_PORT``), ``WORKBENCH_HOME`` and the jar cache.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- paths ------------------------------------------------------------------------------------
    @property
    def directory(self) -> Path:
        return self.settings.kafka_dir

    @property
    def pid_file(self) -> Path:
        return self.directory / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.settings.logs_dir / "kafka.log"

    @property
    def controller_port(self) -> int:
        return self.settings.kafka_port + 1

    # -- state ------------------------------------------------------------------------------------
    def pid(self) -> int | None:
        """The broker's pid if it is running, else None (a stale pid file is removed)."""
        if not self.pid_file.exists():
            return None
        pid = read_pid_file(self.pid_file)  # pid and start time: a reused pid is not ours
        if pid is not None and self._is_our_kafka(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def _is_our_kafka(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return True  # no /proc (macOS): trust the pid file
        return b"kafka.Kafka" in cmdline

    def status(self, brokers: int | None = None) -> BrokerStatus:
        """Whether the broker runs and where (every listener, and where secured clients find their
        credentials and CA)."""
        pid = self.pid()
        running = self.running_listeners() if pid is not None else None
        text = self._listener_text(running)
        if running is not None and running != self._wanted_listeners():
            # What runs, not what these settings would start: every other command of this home
            # looks for the settings' listeners and would wait on a port that speaks another protocol.
            text += (f" (as started; these settings say {self._wanted_listeners()}: export the "
                     "WORKBENCH_KAFKA_LISTENERS / WORKBENCH_KAFKA_PORT it was started with)")
        return BrokerStatus(self.settings.bootstrap_servers, True, pid is not None, pid, self.log_file, brokers,
                            listeners=text)

    def _listener_text(self, running: str | None = None) -> str:
        if running is None:
            ports = self.settings.kafka_listener_ports.items()
        else:
            ports = [(name, int(address.rsplit(":", 1)[1])) for name, _, address in
                     (item.partition("://") for item in running.split(",") if item)]
        parts = [f"{name} 127.0.0.1:{port}" for name, port in ports]
        names = ",".join(name for name, _ in ports)
        if "SASL" in names:
            parts.append(f"SASL user and password in {self.settings.kafka_credentials_file}")
        if "SSL" in names:
            parts.append(f"CA certificate {self.settings.kafka_ca_file}")
        return ", ".join(parts)

    def _wanted_listeners(self) -> str:
        return ",".join(f"{name}://127.0.0.1:{port}" for name, port in self.settings.kafka_listener_ports.items())

    def running_listeners(self) -> str | None:
        """``advertised.listeners`` of the broker this home started last (None before its first start)."""
        try:
            lines = (self.directory / "server.properties").read_text().splitlines()
        except OSError:
            return None
        return next((line.removeprefix("advertised.listeners=") for line in lines
                     if line.startswith("advertised.listeners=")), None)

    def check_running_listeners(self) -> None:
        """A running broker keeps the listeners it started with: say so instead of waiting on a port
        that nothing listens on (or that speaks another protocol)."""
        if self.pid() is None:
            return
        running = self.running_listeners()
        wanted = self._wanted_listeners()
        if running is not None and running != wanted:
            msg = (f"The local Kafka already runs with listeners {running}, not {wanted} "
                   "(WORKBENCH_KAFKA_LISTENERS / WORKBENCH_KAFKA_PORT). Stop it with `workbench kafka stop` "
                   "and start it again to change them.")
            raise BrokerError(msg)

    # -- security ---------------------------------------------------------------------------------
    def _security(self, java: str) -> tuple[ManagedCredentials | None, Path | None]:
        """Credentials and key stores the chosen listeners need (made once, then reused)."""
        names = self.settings.kafka_listener_ports
        if set(names) == {"PLAINTEXT"}:
            return None, None
        credentials = ensure_credentials(self.settings)
        stores = ensure_key_stores(self.settings, java, credentials) if any(n.endswith("SSL") for n in names) else None
        return credentials, stores

    def _probe_settings(self, credentials: ManagedCredentials | None) -> Settings:
        """Settings of the readiness probe: on a SASL first listener it authenticates with PLAIN, which
        the broker's JAAS settings accept from the first moment (SCRAM users exist only once stored)."""
        if credentials is None or not self.settings.security_protocol.startswith("SASL_"):
            return self.settings
        return self.settings.with_overrides(kafka_sasl_mechanism="PLAIN", kafka_sasl_username=credentials.username,
                                            kafka_sasl_password=credentials.password)

    # -- lifecycle --------------------------------------------------------------------------------
    def _write_config(self, listener_lines: list[str]) -> Path:
        controller = self.controller_port
        data_dir = self.directory / "data"
        config = self.directory / "server.properties"
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # owner-only: holds the generated SASL password and key-store password of secured listeners
        config.touch(mode=0o600)
        config.chmod(0o600)
        if "," in str(data_dir):  # log.dirs is a comma-separated list: no escape keeps one folder whole
            msg = (f"Kafka cannot keep its data in {data_dir}: its log.dirs setting splits a path at commas. "
                   "Use a WORKBENCH_HOME without a comma, or an external cluster (KAFKA_BOOTSTRAP_SERVERS).")
            raise BrokerError(msg)
        config.write_text(
            java_properties(
                [
                    "# Written by the workbench on every start; edit WORKBENCH_* settings instead.",
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{controller}",
                    *listener_lines,
                    f"log.dirs={data_dir}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=8",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "log.retention.check.interval.ms=60000",
                    # The controller appends a no-op record every 500 ms by default so that brokers can
                    # tell a stalled metadata log (KIP-835); with one node that is only idle CPU
                    # (measured: an idle broker 27 -> 20 ms of CPU per second).
                    "metadata.max.idle.interval.ms=5000",
                    "message.max.bytes=16777216",
                    # Kafka refuses a message dated more than an hour past its clock (since 3.6); a replayed
                    # log can lie in the future (synthetic data, local times read as UTC): the apps' own
                    # event-time guard judges its times, not the broker's clock
                    f"log.message.timestamp.after.max.ms={NO_LIMIT_MS}",
                    "",
                ]
            )
        )
        log4j = self.directory / "log4j2.properties"
        log4j.touch(mode=0o600)  # owner-only as everything under the home, whatever the caller's umask
        log4j.chmod(0o600)
        log_file = str(self.log_file).replace("${", "$${")  # log4j2 would look up "${...}" in a folder name
        log4j.write_text(
            java_properties(
                [
                    "status = warn",
                    # Rolls at LOG_MAX_BYTES, keeping LOG_BACKUPS old files, like every workbench log.
                    "appender.file.type = RollingFile",
                    "appender.file.name = FILE",
                    f"appender.file.fileName = {log_file}",
                    f"appender.file.filePattern = {log_file}.%i",
                    "appender.file.layout.type = PatternLayout",
                    "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                    "appender.file.policies.type = Policies",
                    "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
                    f"appender.file.policies.size.size = {defaults.LOG_MAX_BYTES}",
                    "appender.file.strategy.type = DefaultRolloverStrategy",
                    f"appender.file.strategy.max = {defaults.LOG_BACKUPS}",
                    "appender.file.strategy.fileIndex = min",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.file.ref = FILE",
                    "logger.kafka.name = kafka",
                    "logger.kafka.level = INFO",
                    "logger.state.name = state.change.logger",
                    "logger.state.level = WARN",
                    "",
                ]
            )
        )
        return config

    def _java_command(self, java: str, libs: Path, main: str, *args: str) -> list[str]:
        return [
            java,
            "-Xms256m",
            f"-Xmx{self.settings.kafka_heap}",
            # One small heap on a machine of a few cores: the serial collector's short young pauses cost
            # less CPU than G1's concurrent and refinement threads and write barriers (measured).
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # faster start-up; the broker is not CPU-bound here
            "-Djava.awt.headless=true",
            # a URI: a folder name with "${" or a backslash is read as written
            f"-Dlog4j2.configurationFile={(self.directory / 'log4j2.properties').absolute().as_uri()}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _format_storage(self, java: str, libs: Path, config: Path) -> None:
        if (self.directory / "data" / "meta.properties").exists():
            return
        cluster_id = uuid.uuid4().hex[:22]
        command = self._java_command(java, libs, "kafka.tools.StorageTool",
                                     "format", "-t", cluster_id, "-c", str(config), "--ignore-formatted")
        result = subprocess.run(command, capture_output=True, text=True, check=False, umask=_OWNER_ONLY,
                                env=java_env())
        if result.returncode != 0:
            msg = f"Formatting Kafka storage in {self.directory / 'data'} failed: {result.stderr.strip()[-800:]}"
            raise BrokerError(msg)

    def start(self, timeout: float = 90.0) -> BrokerStatus:
        """Start the broker (no-op when it already runs) and wait until it answers.

        Starts are serialised on a lock file, so two processes that find the broker down (the
        supervisor restarting it, a user's ``workbench kafka start``) start it once.
        """
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(os.open(self.directory / "start.lock", os.O_RDWR | os.O_CREAT, 0o600), "rb+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self._start(timeout)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _start(self, timeout: float) -> BrokerStatus:
        if not self.settings.manages_kafka:
            msg = (
                f"KAFKA_BOOTSTRAP_SERVERS is set ({self.settings.kafka_bootstrap_servers}), so the "
                "workbench uses that cluster and never starts its own. Unset it to use the local Kafka."
            )
            raise BrokerError(msg)
        if self.pid() is not None:
            self.check_running_listeners()
            wait_for_broker(self.settings, timeout=timeout)
            return self.status()
        ports = self.settings.kafka_listener_ports
        if max(*ports.values(), self.controller_port) > 65535:
            msg = (f"WORKBENCH_KAFKA_PORT {self.settings.kafka_port} leaves no room for the controller (the next "
                   f"port) and the {len(ports)} listener(s) of WORKBENCH_KAFKA_LISTENERS "
                   f"({self.settings.kafka_listeners}): choose a lower port.")
            raise BrokerError(msg)
        for needed in (*ports.values(), self.controller_port):
            if not _port_free(needed):
                used = ", ".join(f"{p} ({name})" for name, p in ports.items())
                owner = _workbench_kafka_on(needed)
                program = ("Stop the program using it" if owner is None else
                           f"It is the local Kafka (pid {owner[1]}) of the workbench under {owner[0]}: stop that one "
                           f"(`workbench --home {shlex.quote(owner[0])} stop --kafka`)")
                msg = (
                    f"Port {needed} on 127.0.0.1 is already in use, so the local Kafka cannot start "
                    f"(it needs {used} for clients and {self.controller_port} for its controller). "
                    f"{program}, or choose another port for this home with WORKBENCH_KAFKA_PORT."
                )
                raise PortInUseError(msg)
        java = find_java()
        libs = ensure_kafka_jars(self.settings)
        credentials, stores = self._security(java)
        config = self._write_config(server_properties(self.settings, credentials, stores))
        self._format_storage(java, libs, config)
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        stdout = os.fdopen(os.open(self.settings.logs_dir / "kafka.stdout.log",
                                   os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        command = self._java_command(java, libs, "kafka.Kafka", str(config))
        logger.info("starting Kafka %s on %s", KAFKA_VERSION, self.settings.bootstrap_servers)
        # Tagged with the home (found again without the pid file); owner-only files, data included.
        process = subprocess.Popen(
            command, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.directory, umask=_OWNER_ONLY,
            env=java_env(tags(self.settings.home, "kafka")),
        )
        stdout.close()
        write_pid_file(self.pid_file, process.pid)
        try:
            return self._await_ready(process, credentials, timeout)
        except BaseException:
            self.stop()  # never leave a half-started broker behind
            raise

    def _await_ready(self, process: subprocess.Popen, credentials: ManagedCredentials | None,
                     timeout: float) -> BrokerStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                msg = (f"Kafka exited during start-up with code {process.returncode}; "
                       f"see {self.log_file} and {self.settings.logs_dir / 'kafka.stdout.log'}.")
                raise BrokerError(msg)
            try:
                brokers = wait_for_broker(self._probe_settings(credentials), timeout=2.0)
            except BrokerAuthenticationError:
                raise
            except BrokerUnavailableError:
                continue
            if credentials is not None and "SASL_" in self.settings.kafka_listeners:
                register_scram(self._probe_settings(credentials), credentials,
                               timeout=max(5.0, deadline - time.monotonic()))
                # the SCRAM user reaches the broker's credential cache a moment after the controller took it
                wait_for_broker(self.settings, timeout=15.0, auth_retries=True)
            logger.info("Kafka ready at %s (pid %d)", self._listener_text(), process.pid)
            return self.status(brokers=brokers)
        msg = f"Kafka did not become ready within {timeout:.0f} s; see {self.log_file}."
        raise BrokerError(msg)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after ``timeout``). True if it ran."""
        pid = self.pid()
        if pid is None:
            return False
        logger.info("stopping Kafka (pid %d)", pid)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.2)
        if pid_alive(pid):
            logger.warning("Kafka did not stop within %.0f s; killing it", timeout)
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

