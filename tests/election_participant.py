"""One participant of the broker trainer election, run as a subprocess by tests/test_election.py.

Usage: python -m tests.election_participant HOME BOOTSTRAP EVENTS_TOPIC GROUP OUT

Every 20 ms, while :attr:`BrokerLease.held`, it performs the fenced operation: it appends
``pid confirmed_at now fence_s`` (``time.monotonic()``, one clock for every process of the
machine) to OUT with one ``write`` of an ``O_APPEND`` file, so lines never interleave.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from workbench.config import Settings
from workbench.pipeline.scoring._election import BrokerLease


def main(home: str, bootstrap: str, topic: str, group: str, out: str) -> None:
    """Run the participant until killed."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    settings = Settings(home=home, kafka_bootstrap_servers=bootstrap, topic_query_events=topic)
    lease = BrokerLease(settings, group)
    lease.try_acquire()
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    while True:
        confirmed = lease.confirmed_at()
        now = time.monotonic()
        if confirmed is not None and now - confirmed < lease.fence_s:
            os.write(fd, f"{os.getpid()} {confirmed:.6f} {now:.6f} {lease.fence_s:.3f}\n".encode())
        time.sleep(0.02)


if __name__ == "__main__":
    main(*sys.argv[1:6])
