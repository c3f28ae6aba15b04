"""Secured listeners of the managed broker: generated SASL credentials, a private CA, key stores.

Everything lives in ``<WORKBENCH_HOME>/kafka/security`` (folder 0700, files 0600) and is made once,
on the first start that needs it, then reused: the SASL user ``workbench`` with a random password
(PLAIN through the broker's JAAS settings; SCRAM-SHA-256/512 stored in the cluster metadata through
the admin API), and a private CA plus a broker key store and trust store made with ``keytool`` (it
comes with the Java runtime the broker needs anyway). Clients trust ``ca.pem``
(``ssl.ca.location``); :meth:`workbench.config.Settings.kafka_client_config` reads both files when
the workbench manages the broker, so nothing secret travels through environment or spec files.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.broker.exceptions import BrokerError, BrokerSetupError
from workbench.config import Settings

__all__ = ["ManagedCredentials", "ensure_credentials", "ensure_key_stores", "register_scram", "server_properties"]

logger = logging.getLogger(__name__)

USERNAME = "workbench"
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
_SCRAM_ITERATIONS = 8192
_CERT_DAYS = "3650"
_SAN = "SAN=dns:localhost,ip:127.0.0.1"


@dataclass(frozen=True)
class ManagedCredentials:
    """The managed broker's generated SASL user and key-store password."""

    username: str
    password: str
    store_password: str


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp: mode 0600
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _security_dir(settings: Settings) -> Path:
    directory = settings.kafka_security_dir
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    return directory


def ensure_credentials(settings: Settings) -> ManagedCredentials:
    """The generated credentials, created on first use (``credentials.json``, 0600)."""
    path = settings.kafka_credentials_file
    if path.exists():
        data = json.loads(path.read_text())
        return ManagedCredentials(data["username"], data["password"], data["store_password"])
    _security_dir(settings)
    # token_hex: no character needs quoting in a JAAS line or a properties file
    credentials = ManagedCredentials(USERNAME, secrets.token_hex(16), secrets.token_hex(16))
    _write_private(path, json.dumps({"username": credentials.username, "password": credentials.password,
                                     "store_password": credentials.store_password}, indent=2) + "\n")
    return credentials


def _keytool(java: str) -> str:
    beside = Path(java).resolve().parent / "keytool"
    if beside.exists():
        return str(beside)
    found = shutil.which("keytool")
    if found is None:
        msg = (f"The SSL listeners of the local Kafka need `keytool` (part of every Java runtime); none was "
               f"found beside {java} or on PATH. Install a full Java 17+ runtime, or leave SSL out of "
               "WORKBENCH_KAFKA_LISTENERS.")
        raise BrokerSetupError(msg)
    return found


def _stores_complete(directory: Path) -> bool:
    return all((directory / name).exists() for name in ("ca.pem", "broker.p12", "truststore.p12"))


def ensure_key_stores(settings: Settings, java: str, credentials: ManagedCredentials) -> Path:
    """The private CA (``ca.pem``), broker key store and trust store, made once with keytool.

    Made in a temporary folder and moved into place file by file, ``ca.pem`` last, so an
    interrupted run is simply made again at the next start. Returns the security folder.
    """
    directory = _security_dir(settings)
    if _stores_complete(directory):
        return directory
    keytool = _keytool(java)
    password = credentials.store_password
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=directory, prefix=".keys-") as tmp:
        work = Path(tmp)
        store = ["-storetype", "PKCS12", "-storepass", password]

        def run(*args: str) -> None:
            result = subprocess.run([keytool, *args], capture_output=True, text=True, check=False,
                                    cwd=work, umask=0o077)
            if result.returncode != 0:
                msg = f"keytool {args[0]} failed making the local Kafka's certificates: {result.stdout}{result.stderr}"
                raise BrokerError(msg.strip()[-800:])

        ca, broker, trust = str(work / "ca.p12"), str(work / "broker.p12"), str(work / "truststore.p12")
        run("-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048", "-validity", _CERT_DAYS,
            "-dname", "CN=Pulse Workbench local CA", "-ext", "bc:c", "-keystore", ca, *store)
        run("-exportcert", "-rfc", "-alias", "ca", "-keystore", ca, "-file", str(work / "ca.pem"), *store)
        run("-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-validity", _CERT_DAYS,
            "-dname", "CN=localhost", "-ext", _SAN, "-keystore", broker, *store)
        run("-certreq", "-alias", "broker", "-keystore", broker, "-file", str(work / "broker.csr"), *store)
        run("-gencert", "-rfc", "-alias", "ca", "-keystore", ca, "-infile", str(work / "broker.csr"),
            "-outfile", str(work / "broker.pem"), "-validity", _CERT_DAYS, "-ext", _SAN, *store)
        run("-importcert", "-noprompt", "-alias", "ca", "-file", str(work / "ca.pem"), "-keystore", broker, *store)
        run("-importcert", "-alias", "broker", "-file", str(work / "broker.pem"), "-keystore", broker, *store)
        run("-importcert", "-noprompt", "-alias", "ca", "-file", str(work / "ca.pem"), "-keystore", trust, *store)
        for name in ("ca.p12", "broker.p12", "truststore.p12", "ca.pem"):
            os.replace(work / name, directory / name)
    logger.info("made the local Kafka's CA and key stores in %s (%.1f s)", directory, time.monotonic() - started)
    return directory


def _jaas(module: str, credentials: ManagedCredentials, *, users: bool) -> str:
    user = f' user_{credentials.username}="{credentials.password}"' if users else ""
    return (f'{module} required username="{credentials.username}" password="{credentials.password}"{user};')


def server_properties(settings: Settings, credentials: ManagedCredentials | None, stores: Path | None) -> list[str]:
    """The ``server.properties`` lines of the listeners (plain and secured) of the managed broker."""
    ports = settings.kafka_listener_ports
    names = list(ports)
    controller = settings.kafka_port + 1
    listeners = ",".join(f"{name}://127.0.0.1:{port}" for name, port in ports.items())
    protocol_map = ",".join([*(f"{name}:{name}" for name in names), "CONTROLLER:PLAINTEXT"])
    lines = [
        f"listeners={listeners},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners={listeners}",
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={names[0]}",
        f"listener.security.protocol.map={protocol_map}",
    ]
    sasl = [name for name in names if name.startswith("SASL_")]
    if sasl:
        assert credentials is not None
        lines += [f"sasl.enabled.mechanisms=PLAIN,{','.join(SCRAM_MECHANISMS)}",
                  "sasl.mechanism.inter.broker.protocol=PLAIN"]
        plain = _jaas("org.apache.kafka.common.security.plain.PlainLoginModule", credentials, users=True)
        scram = _jaas("org.apache.kafka.common.security.scram.ScramLoginModule", credentials, users=False)
        for name in sasl:
            prefix = f"listener.name.{name.lower()}"
            lines.append(f"{prefix}.plain.sasl.jaas.config={plain}")
            lines += [f"{prefix}.{mechanism.lower()}.sasl.jaas.config={scram}" for mechanism in SCRAM_MECHANISMS]
    if any(name.endswith("SSL") for name in names):
        assert credentials is not None and stores is not None
        password = credentials.store_password
        lines += [
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={stores / 'broker.p12'}",
            f"ssl.keystore.password={password}",
            f"ssl.key.password={password}",
            "ssl.truststore.type=PKCS12",
            f"ssl.truststore.location={stores / 'truststore.p12'}",
            f"ssl.truststore.password={password}",
            "ssl.client.auth=none",
        ]
    return lines


def register_scram(settings: Settings, credentials: ManagedCredentials, timeout: float = 30.0) -> None:
    """Store the SCRAM credentials of the generated user in the cluster metadata (idempotent).

    Runs at every start with a SASL listener, through the admin API over the first listener
    (PLAIN when that is a SASL listener, which the JAAS settings accept from the first moment),
    so a home formatted before SASL was switched on gets them too.
    """
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    config = settings.kafka_client_config()
    if config["security.protocol"].startswith("SASL_"):
        config.update({"sasl.mechanism": "PLAIN", "sasl.username": credentials.username,
                       "sasl.password": credentials.password})
    admin = AdminClient({**config, "log_level": 3})
    mechanisms = {"SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256, "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512}
    upserts = [UserScramCredentialUpsertion(credentials.username,
                                            ScramCredentialInfo(mechanisms[name], _SCRAM_ITERATIONS),
                                            credentials.password.encode())
               for name in SCRAM_MECHANISMS]
    deadline = time.monotonic() + timeout
    while True:
        try:
            for upsert in upserts:  # one per request: Kafka refuses two changes of one user in one request
                for future in admin.alter_user_scram_credentials([upsert], request_timeout=10).values():
                    future.result()
            return
        except Exception as exc:
            if time.monotonic() >= deadline:
                msg = f"Could not store the SCRAM credentials of the local Kafka's user {credentials.username!r}: {exc}"
                raise BrokerError(msg) from exc
            time.sleep(0.5)
