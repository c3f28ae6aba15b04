"""The workbench's in-process Kafka clients log through Python logging, never raw to stderr."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from confluent_kafka import Producer

from workbench.config import Settings
from workbench.runtime import Workbench


def test_in_process_clients_log_to_python_logging(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(home=tmp_path / "home", kafka_bootstrap_servers="127.0.0.1:9")  # nothing listens
    wb = Workbench(settings)
    assert wb.settings.home == settings.home and wb.settings.bootstrap_servers == "127.0.0.1:9"
    assert wb.settings.to_env() == settings.to_env()  # the apps get the same settings
    config = wb.settings.kafka_client_config()
    assert config["logger"] is logging.getLogger("workbench.kafka")
    assert "logger" not in settings.kafka_client_config()  # the apps' clients are untouched
    with caplog.at_level(logging.DEBUG, logger="workbench.kafka"):
        producer = Producer({**config, "socket.connection.setup.timeout.ms": 1000})
        producer.produce("t", b"x")
        producer.flush(3)
    err = capfd.readouterr().err
    assert "127.0.0.1:9" not in err and "Connection refused" not in err, err
    assert any(r.name == "workbench.kafka" and "127.0.0.1:9" in r.getMessage() for r in caplog.records)


def test_a_kernel_without_logging_set_up_shows_no_librdkafka_lines(tmp_path: Path) -> None:
    """A notebook kernel configures no logging: Python's last-resort handler printed every librdkafka
    "Connection refused" line (WARNING and up) into the cell output once the broker was gone, and the
    replay controller's clients (a panel's commands and status reads) wrote theirs raw to stderr."""
    import subprocess
    import sys

    code = (
        "from workbench.config import Settings\n"
        "from workbench.replay import ReplayError\n"
        "from workbench.runtime import Workbench\n"
        f"wb = Workbench(Settings(home={str(tmp_path / 'home')!r}, kafka_bootstrap_servers='127.0.0.1:9'))\n"
        "try:\n"
        "    wb.pause()  # a panel click with the broker gone: not delivered within 10 s\n"
        "except ReplayError:\n"
        "    print('refused')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert run.returncode == 0 and "refused" in run.stdout, run.stderr
    assert "127.0.0.1:9" not in run.stderr and "Connection refused" not in run.stderr, run.stderr
