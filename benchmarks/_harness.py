"""Shared set-up for the benchmarks: a broker to run against, cached inputs, peak memory."""

from __future__ import annotations

import collections
import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.broker import LocalKafka, ensure_broker
from workbench.config import Settings
from workbench.data.generator import generate

CACHE = Path(os.environ.get("WORKBENCH_BENCH_CACHE", Path(tempfile.gettempdir()) / "workbench-bench"))


def free_port_pair(start: int | None = None) -> int:
    """A client port whose successor (the controller port) is free too.

    The search starts at a random even port (unless ``start`` is given), so benchmarks started
    at the same moment do not race for the same pair.
    """
    if start is None:
        start = 29092 + 2 * random.randrange(400)
    for port in range(start, start + 400, 2):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for the benchmark broker")


@contextlib.contextmanager
def broker(home: Path | None = None) -> Iterator[Settings]:
    """KAFKA_BOOTSTRAP_SERVERS if set, else a private local Kafka that is stopped afterwards. A home made
    here is deleted afterwards (each soak run had left 433 MB in /tmp), unless WORKBENCH_BENCH_KEEP_HOME=1."""
    import shutil

    made = home is None
    home = home or Path(tempfile.mkdtemp(prefix="workbench-bench-"))
    try:
        if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            settings = Settings(home=home)
            ensure_broker(settings)
            yield settings
            return
        settings = Settings(home=home, kafka_port=free_port_pair())
        # A loaded machine (helpers benchmarking side by side) can take minutes to start a JVM.
        ensure_broker(settings, timeout=300.0)
        try:
            yield settings
        finally:
            from workbench.runtime._status import close_status_clients

            close_status_clients()  # the status clients would keep reconnecting (and logging) once it is gone
            LocalKafka(settings).stop()
    finally:
        if made and os.environ.get("WORKBENCH_BENCH_KEEP_HOME") != "1":
            shutil.rmtree(home, ignore_errors=True)
        elif made:
            print(f"home kept: {home}", file=sys.stderr)


def demo_log(days: int = 4, instances: int = 16, seed: int = 0, rows_per_day: int | None = None,
             kinds: str | None = None) -> Path:
    """A generated log, cached across benchmark runs (same arguments, same bytes); ``kinds`` as
    ``workbench generate --kinds`` (None: the default, classic)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tag = "" if kinds is None else f"_{kinds.replace(',', '-')}"
    path = CACHE / f"redset_{days}d_{instances}i_s{seed}_{rows_per_day or 'default'}{tag}.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        generate(tmp, days=days, instances=instances, seed=seed, rows_per_day=rows_per_day, kinds=kinds)
        tmp.replace(path)
    return path


@dataclass(frozen=True)
class ChildRun:
    """Wall seconds and peak resident memory of one child process."""

    seconds: float
    peak_rss_mb: float
    returncode: int
    stderr: str


def run_child(command: Sequence[str], env: dict[str, str] | None = None) -> ChildRun:
    """Run ``command`` and measure its wall time and peak RSS (from wait4's rusage)."""
    started = time.perf_counter()
    process = subprocess.Popen(list(command), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(seconds, usage.ru_maxrss / 1024, process.returncode, stderr)


def private_run(settings: Settings, prefix: str = "run") -> Settings:
    """``settings`` with a home folder and every topic of its own (a fresh name per call), on the same broker."""
    suffix = uuid.uuid4().hex[:6]
    return settings.with_overrides(
        home=settings.home / f"{prefix}-{suffix}", kafka_bootstrap_servers=settings.bootstrap_servers,
        topic_query_events=f"bench.events.{suffix}", topic_anomalies=f"bench.anomalies.{suffix}",
        topic_dead_letter=f"bench.dead.{suffix}", topic_replay_control=f"bench.control.{suffix}",
        topic_replay_state=f"bench.state.{suffix}",
    )


def events_processed(wb: Any) -> int:
    """Events the slowest event-consuming app has processed, from the apps' status files (no broker call)."""
    from workbench.pipeline import read_app_statuses

    counts = []
    for name in wb.apps:
        found = [s for s in read_app_statuses(wb.settings, name).values() if "events" in s.get("counters", {})]
        if found:
            counts.append(sum(int(s["counters"]["events"]) for s in found))
    return min(counts or [0])


def until_drained(wb: Any, rows: int, *, limit_s: float = 3600.0, every_s: float = 1.0,
                  status_every_s: float = 5.0) -> Iterator[tuple[Any, int]]:
    """Yield ``(status, events the slowest app processed)`` every ``every_s`` until ``rows`` are drained.

    The processed count is read every ``every_s`` from the apps' status files; the full
    ``wb.status()`` (consumer lag, drained) only every ``status_every_s`` and once every row is
    processed: each one opens several Kafka clients (tens of ms of broker CPU), which polled every
    second would be a measurable share of the broker CPU the benchmark reports.
    """
    started = time.monotonic()
    status, status_at = wb.status(), time.monotonic()
    while True:
        processed = events_processed(wb)
        if processed >= rows or time.monotonic() - status_at >= status_every_s:
            status, status_at = wb.status(), time.monotonic()
            processed = min(status.events_processed.values() or [0])
        yield status, processed
        if status.drained and processed >= rows:
            return
        if time.monotonic() - started > limit_s:
            raise SystemExit("pipeline did not drain within an hour")
        time.sleep(every_s)


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment that points a child ``workbench`` process at the same broker, home and topics."""
    return {**os.environ, **settings.to_env(), **extra}


#: ``-P``: ``-m`` would otherwise put the current directory first on ``sys.path``, so a benchmark started
#: inside another checkout (or worktree) would run that checkout's apps instead of ``PYTHONPATH``'s.
WORKBENCH = [sys.executable, "-P", "-m", "workbench.cli"]


def summarize_profile(out: Path, top: int = 25) -> None:
    """Print the top frames of a ``py-spy --format raw`` file by own and by total samples (stderr)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    print(f"--- {out.name}: {samples} samples; top frames by own samples", file=sys.stderr)
    for frame, n in own.most_common(top):
        print(f"{100 * n / max(samples, 1):5.1f}%  {frame}", file=sys.stderr)
    print(f"--- {out.name}: top frames by total (inclusive) samples", file=sys.stderr)
    for frame, n in total.most_common(top + 15):
        print(f"{100 * n / max(samples, 1):5.1f}%  {frame}", file=sys.stderr)
