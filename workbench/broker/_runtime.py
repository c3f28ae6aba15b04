"""Fetch the Apache Kafka broker jars from Maven Central once, into the user's cache."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from workbench.broker.exceptions import BrokerSetupError
from workbench.config import KAFKA_VERSION, Settings

__all__ = ["ensure_kafka_jars", "find_java", "java_env", "java_properties"]

logger = logging.getLogger(__name__)

_JAVA_HINT = (
    "Install a Java runtime, version 17 or newer (Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`; "
    "macOS: `brew install openjdk@17`; conda: `conda install -c conda-forge openjdk=17`), "
    "or point the workbench at an existing cluster with KAFKA_BOOTSTRAP_SERVERS."
)
_MAVEN_HINT = (
    "Install Apache Maven 3.6 or newer (Debian/Ubuntu: `apt-get install maven`; macOS: `brew install maven`; "
    "conda: `conda install -c conda-forge maven`): the workbench uses it once to fetch Kafka "
    f"{KAFKA_VERSION} from Maven Central. Or set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster."
)


def find_java() -> str:
    """Path of a Java 17+ executable (``JAVA_HOME`` first, then ``PATH``)."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    if found := shutil.which("java"):
        candidates.append(found)
    for java in candidates:
        if not Path(java).exists():
            continue
        try:
            out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = out.stderr + out.stdout
        version = _java_major(text)
        if version is not None and version >= 17:
            return java
        msg = f"Kafka {KAFKA_VERSION} needs Java 17 or newer, but {java} is version {version}. {_JAVA_HINT}"
        raise BrokerSetupError(msg)
    msg = f"No Java runtime found (checked JAVA_HOME and PATH), so the local Kafka cannot start. {_JAVA_HINT}"
    raise BrokerSetupError(msg)


def java_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a Java child (the broker, its tools): this one's, in a UTF-8 locale.

    Python hands paths to Java as UTF-8 bytes whatever the locale; Java decodes them by the locale's
    encoding, so under ``LC_ALL=C`` a home with a non-ASCII name stopped Kafka with
    ``InvalidPathException``."""
    return {**os.environ, "LC_ALL": "C.UTF-8", **(extra or {})}


def _escape_property(value: str) -> str:
    out = []
    for char in value:
        if char == "\\":
            out.append("\\\\")
        elif 0x20 <= ord(char) <= 0x7E:
            out.append(char)
        else:  # \\uXXXX per UTF-16 unit: line breaks, and what ISO-8859-1 would read as other letters
            units = char.encode("utf-16-be")
            out += [f"\\u{int.from_bytes(units[i:i + 2], 'big'):04x}" for i in range(0, len(units), 2)]
    return "".join(out)


def java_properties(lines: list[str]) -> str:
    """``key=value`` lines as a Java ``.properties`` file reads them (``Properties.load``: ISO-8859-1,
    ``\\`` an escape): a home with ``ä`` or a backslash in its name sent Kafka's data and log elsewhere."""
    out = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            out.append(line)
            continue
        key, _, value = line.partition("=")
        out.append(f"{key.strip()}={_escape_property(value.strip())}")
    return "\n".join(out)


def _java_major(version_output: str) -> int | None:
    # `openjdk version "17.0.15"` or `java version "1.8.0_392"`
    for token in version_output.replace('"', " ").split():
        head = token.split(".")[0].split("-")[0]
        if head.isdigit():
            major = int(head)
            if major == 1 and token.count(".") >= 1:
                return int(token.split(".")[1])
            return major
    return None


def _jars_complete(libs: Path) -> bool:
    return (libs / ".complete").exists() and any(libs.glob(f"kafka_2.13-{KAFKA_VERSION}.jar"))


def ensure_kafka_jars(settings: Settings) -> Path:
    """Return the folder of Kafka jars, fetching them with Maven the first time.

    The download lands in a temporary folder that is renamed into place only when complete,
    so an interrupted fetch is simply retried next time.
    """
    libs = settings.kafka_libs_dir
    if _jars_complete(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        msg = f"Maven (`mvn`) is not on PATH. {_MAVEN_HINT}"
        raise BrokerSetupError(msg)
    try:
        libs.parent.mkdir(parents=True, exist_ok=True)
        fetch = tempfile.TemporaryDirectory(dir=libs.parent, prefix=".fetch-")
    except OSError as exc:  # HOME missing or read-only: the cache is the folder to name, not WORKBENCH_HOME
        msg = (f"The Kafka jars' cache {libs.parent} cannot be created or written ({exc.strerror}). "
               "Set WORKBENCH_CACHE_DIR to a writable folder (its default follows XDG_CACHE_HOME, then HOME).")
        raise BrokerSetupError(msg) from exc
    pom = resources.files("workbench.broker").joinpath("kafka-pom.xml")
    logger.info("fetching Apache Kafka %s from Maven Central into %s (once)", KAFKA_VERSION, libs)
    with fetch as tmp:
        tmp_libs = Path(tmp) / "libs"
        pom_path = Path(tmp) / "pom.xml"
        pom_path.write_text(pom.read_text())
        command = [
            mvn, "-q", "-B", "-f", str(pom_path),
            f"-Dkafka.version={KAFKA_VERSION}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp_libs}",
            "-DincludeScope=runtime",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False, env=java_env())
        if result.returncode != 0 or not any(tmp_libs.glob("kafka_2.13-*.jar")):
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
            msg = (
                f"Could not fetch Kafka {KAFKA_VERSION} from Maven Central (mvn exit code {result.returncode}). "
                "The first start needs network access to Maven Central (or a Maven mirror configured "
                "in ~/.m2/settings.xml); later starts use the cached jars. "
                f"Maven said:\n{tail}"
            )
            raise BrokerSetupError(msg)
        (tmp_libs / ".complete").write_text(KAFKA_VERSION)
        if libs.exists():
            shutil.rmtree(libs)
        tmp_libs.rename(libs)
    return libs
