"""Secured listeners of the managed broker: generated SASL credentials, a private CA, key stores.

Everything lives in ``<WORKBENCH_HOME>/kafka/security`` (folder 0700, files 0600) and is made once,
on the first start that needs it, then reused: the SASL user ``workbench`` with a random password
(PLAIN through the broker's JAAS settings; SCRAM-SHA-256/512 stored in the cluster metadata through
the admin API), and a private CA plus a broker key store made with ``openssl`` (or, without it, the
``keytool`` of the Java runtime the broker needs anyway). Clients trust ``ca.pem``
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

__all__ = ["ManagedCredentials", "client_env", "ensure_credentials", "ensure_key_stores", "register_scram",
           "server_properties"]

logger = logging.getLogger(__name__)

USERNAME = "workbench"
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
_SCRAM_ITERATIONS = 8192
_CERT_DAYS = "3650"
_SAN = "SAN=dns:localhost,ip:127.0.0.1"
#: What the SSL listeners need, in the order they are moved into place (ca.pem last).
STORE_FILES = ("broker.p12", "ca.pem")


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


def _keytool(java: str) -> str | None:
    beside = Path(java).resolve().parent / "keytool"
    return str(beside) if beside.exists() else shutil.which("keytool")


def _stores_complete(directory: Path) -> bool:
    return all((directory / name).exists() for name in STORE_FILES)


def _run(tool: str, work: Path, *args: str) -> None:
    from workbench.broker._runtime import java_env

    result = subprocess.run([tool, *args], capture_output=True, text=True, check=False, cwd=work, umask=0o077,
                            stdin=subprocess.DEVNULL, env=java_env())
    if result.returncode != 0:
        msg = (f"{Path(tool).name} {args[0]} failed making the local Kafka's certificates: "
               f"{(result.stdout + result.stderr).strip()[-800:]}")
        raise BrokerError(msg)


def _with_openssl(openssl: str, work: Path, password: str) -> None:
    """CA and broker certificate with the openssl command (about a second)."""
    (work / "ca.cnf").write_text(
        "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=Pulse Workbench local CA\n"
        "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n")
    (work / "broker.cnf").write_text("[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=localhost\n")
    (work / "broker.ext").write_text(
        f"subjectAltName={_SAN.removeprefix('SAN=').replace('dns:', 'DNS:').replace('ip:', 'IP:')}\n"
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    _run(openssl, work, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", _CERT_DAYS, "-config", "ca.cnf", "-extensions", "v3_ca")
    _run(openssl, work, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
         "-config", "broker.cnf")
    _run(openssl, work, "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "broker.pem", "-days", _CERT_DAYS, "-extfile", "broker.ext")
    _run(openssl, work, "pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
         "-name", "broker", "-out", "broker.p12", "-passout", f"pass:{password}")


def _with_keytool(keytool: str, work: Path, password: str) -> None:
    """CA and broker certificate with keytool (seven JVM starts: slower, but always there with Java)."""
    store = ["-storetype", "PKCS12", "-storepass", password]
    _run(keytool, work, "-genkeypair", "-alias", "ca", "-keyalg", "RSA", "-keysize", "2048", "-validity", _CERT_DAYS,
         "-dname", "CN=Pulse Workbench local CA", "-ext", "bc:c", "-keystore", "ca.p12", *store)
    _run(keytool, work, "-exportcert", "-rfc", "-alias", "ca", "-keystore", "ca.p12", "-file", "ca.pem", *store)
    _run(keytool, work, "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
         "-validity", _CERT_DAYS, "-dname", "CN=localhost", "-ext", _SAN, "-keystore", "broker.p12", *store)
    _run(keytool, work, "-certreq", "-alias", "broker", "-keystore", "broker.p12", "-file", "broker.csr", *store)
    _run(keytool, work, "-gencert", "-rfc", "-alias", "ca", "-keystore", "ca.p12", "-infile", "broker.csr",
         "-outfile", "broker.pem", "-validity", _CERT_DAYS, "-ext", _SAN, *store)
    _run(keytool, work, "-importcert", "-noprompt", "-alias", "ca", "-file", "ca.pem", "-keystore", "broker.p12",
         *store)
    _run(keytool, work, "-importcert", "-alias", "broker", "-file", "broker.pem", "-keystore", "broker.p12", *store)


def ensure_key_stores(settings: Settings, java: str, credentials: ManagedCredentials, *,
                      tool: str | None = None) -> Path:
    """The private CA (``ca.pem``) and the broker's key store (``broker.p12``), made once.

    Made with ``openssl`` when it is on PATH, else with the Java runtime's ``keytool`` (``tool``
    forces one: ``"openssl"`` or ``"keytool"``). The CA's private key is deleted once it signed
    the broker's certificate, so nothing else can ever be signed by it. Made in a temporary folder
    and moved into place, ``ca.pem`` last, so an interrupted run is made again at the next start.
    Returns the security folder.
    """
    directory = _security_dir(settings)
    if _stores_complete(directory):
        return directory
    openssl = shutil.which("openssl") if tool in (None, "openssl") else None
    keytool = _keytool(java) if tool in (None, "keytool") and openssl is None else None
    if openssl is None and keytool is None:
        msg = ("The SSL listeners of the local Kafka need `openssl` or the Java runtime's `keytool` to make their "
               f"certificates; neither was found (PATH, and beside {java}). Install openssl (Debian/Ubuntu: "
               "`apt-get install openssl`), or leave SSL out of WORKBENCH_KAFKA_LISTENERS.")
        raise BrokerSetupError(msg)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=directory, prefix=".keys-") as tmp:
        work = Path(tmp)
        if openssl is not None:
            _with_openssl(openssl, work, credentials.store_password)
        else:
            assert keytool is not None
            _with_keytool(keytool, work, credentials.store_password)
        for name in STORE_FILES:  # ca.pem last: its presence marks a complete set
            os.replace(work / name, directory / name)
    logger.info("made the local Kafka's CA and key store in %s with %s (%.1f s)", directory,
                "openssl" if openssl else "keytool", time.monotonic() - started)
    return directory


def client_env(settings: Settings, listener: str) -> dict[str, str]:
    """The KAFKA_* variables another client (or a workbench pointed at it as an external cluster) sets to
    reach one listener of the managed broker. The password is left out: it stays in its file."""
    listener = listener.strip().upper()
    ports = settings.kafka_listener_ports
    if listener not in ports:
        msg = (f"The local Kafka has no {listener!r} listener; it has {', '.join(ports)} "
               "(WORKBENCH_KAFKA_LISTENERS).")
        raise BrokerError(msg)
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports[listener]}", "KAFKA_SECURITY_PROTOCOL": listener}
    if listener.startswith("SASL_"):
        env |= {"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": USERNAME}
    if listener.endswith("SSL"):
        env["KAFKA_SSL_CA_LOCATION"] = str(settings.kafka_ca_file)
    return env


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
            # the broker trusts its own CA (for an SSL inter-broker listener): PEM, no store needed
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={stores / 'ca.pem'}",
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
