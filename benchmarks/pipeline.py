"""End-to-end throughput of the whole pipeline at max replay speed, with lag and peak memory.

Usage: ``.venv/bin/python benchmarks/pipeline.py [--days 4] [--instances 16] [--encoding E --pack N] [--json-days 1]``

The first configuration is the workbench's default replay encoding (``workbench.defaults``:
packed ``arrow``) unless ``--encoding``/``--pack`` name another; the second is JSON, one query
per message (``--json-days``). For each configuration it starts a fresh workbench (replay +
scoring + analytics + anomaly sink, each its own process, plus the broker) on a private Kafka,
replays the generated log at max speed with daily retraining, and samples every process once a
second:

* ``end-to-end: N events/s``: events that *every* app has processed, per second, measured while
  the slowest app goes from 10 % to 90 % of the log (sustained, start-up and tail excluded);
* the total time until every app has consumed everything (drained);
* the largest consumer lag seen, in messages, per app;
* the peak resident memory of every process;
* a cost model: CPU time (user + system) of every process divided by the events of the log, in
  microseconds per event, and their sum (two cores give 2,000,000 us of CPU per second, so
  ``2e6 / total`` is the ceiling of this machine for that configuration). The broker serves
  every configuration: only its CPU during that configuration's run counts, not its start-up
  nor the runs before. Progress is read from the apps' status files every second, the full
  workbench status (consumer lag, which opens Kafka clients) every 5 s.

The one-query-per-message figure uses a shorter log (``--json-days``) so the run stays short.
``--profile DIR`` records a py-spy flame graph (SVG) per app while it runs (``pip install py-spy``;
py-spy needs ptrace rights: root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pyarrow.parquet as pq
from _harness import broker, demo_log, private_run, until_drained

from workbench.config import Settings
from workbench.replay import replay_format
from workbench.runtime import Workbench


@dataclass
class Sample:
    at: float
    processed: int  # events the slowest app has processed


@dataclass
class Measurement:
    samples: list[Sample] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    max_lag: dict[str, int] = field(default_factory=dict)
    #: (process name, pid) -> the latest CPU seconds seen (a restarted process is a new pid)
    cpu_seconds: dict[tuple[str, int], float] = field(default_factory=dict)
    #: (process name, pid) -> CPU seconds it had used before the run (the broker outlives runs)
    cpu_before: dict[tuple[str, int], float] = field(default_factory=dict)

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds per process name, summed over restarts."""
        totals: dict[str, float] = {}
        for (name, pid), seconds in self.cpu_seconds.items():
            totals[name] = totals.get(name, 0.0) + seconds - self.cpu_before.get((name, pid), 0.0)
        return totals


def _sample_memory(wb: Workbench, broker_pid: int | None, m: Measurement) -> None:
    from workbench.runtime.supervisor import read_state

    state = read_state(wb.settings.home) or {}
    pids = {name: p.get("pid") for name, p in state.get("processes", {}).items()}
    pids["supervisor"] = state.get("supervisor_pid")
    if broker_pid:
        pids["kafka broker"] = broker_pid
    tracked = {pid for pid in pids.values() if pid}
    for name, pid in pids.items():
        if not pid:
            continue
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                rss = process.memory_info().rss / 1024**2
                cpu = process.cpu_times()
                # the training subprocesses are the scoring app's children: their CPU counts as scoring
                # (training). The supervisor's children are the apps themselves: counted once, as apps.
                for child in ([] if name == "supervisor" else process.children(recursive=True)):
                    if child.pid in tracked:
                        continue
                    child_cpu = child.cpu_times()
                    m.cpu_seconds[(f"{name} (training)", child.pid)] = child_cpu.user + child_cpu.system
        except psutil.Error:
            continue
        m.peak_rss_mb[name] = max(m.peak_rss_mb.get(name, 0.0), rss)
        m.cpu_seconds[(name, pid)] = cpu.user + cpu.system


def _start_profilers(wb: Workbench, folder: Path, label: str) -> list[subprocess.Popen]:
    """One ``py-spy record`` per app process, writing ``<folder>/<label>-<app>.svg`` when the app stops."""
    from workbench.runtime.supervisor import read_state

    # The environment's own py-spy first: `.venv/bin/python benchmarks/pipeline.py` runs without the venv on PATH.
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    folder.mkdir(parents=True, exist_ok=True)
    profilers = []
    for name, info in (read_state(wb.settings.home) or {}).get("processes", {}).items():
        if info.get("pid"):
            out = folder / f"{label}-{name}.svg"
            profilers.append(subprocess.Popen(
                [py_spy, "record", "--pid", str(info["pid"]), "--rate", "50", "--output", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return profilers


def run(settings: Settings, data, pack: int, encoding: str, broker_pid: int | None,
        profile: Path | None = None) -> tuple[Measurement, float, int]:
    rows = pq.ParquetFile(data).metadata.num_rows
    settings = private_run(settings, "run")
    m = Measurement()
    if broker_pid:
        # The broker runs for every configuration (and started before them): only its CPU from now on counts.
        cpu = psutil.Process(broker_pid).cpu_times()
        m.cpu_before[("kafka broker", broker_pid)] = cpu.user + cpu.system
    started = time.monotonic()
    wb = Workbench.start(data=data, speedup="max", pack=pack, encoding=encoding, settings=settings)
    profilers: list[subprocess.Popen] = []
    try:
        if profile is not None:
            time.sleep(2.0)  # let the supervisor start every process
            profilers = _start_profilers(wb, profile, f"{encoding}-pack{pack}")
        for status, processed in until_drained(wb, rows):
            m.samples.append(Sample(time.monotonic(), processed))
            for name, lag in status.lag.items():
                if lag is not None:
                    m.max_lag[name] = max(m.max_lag.get(name, 0), lag)
            _sample_memory(wb, broker_pid, m)
    finally:
        _sample_memory(wb, broker_pid, m)  # the last CPU reading before the processes go
        wb.stop(kafka=False)
        for profiler in profilers:  # py-spy writes its SVG when the profiled process exits
            profiler.wait(60)
    return m, time.monotonic() - started, rows


def sustained_rate(samples: list[Sample], rows: int) -> float:
    """Events/s of the slowest app between 10 % and 90 % of the log."""
    low = next(s for s in samples if s.processed >= 0.1 * rows)
    high = next(s for s in samples if s.processed >= 0.9 * rows)
    return (high.processed - low.processed) / max(high.at - low.at, 1e-9)


def report(label: str, m: Measurement, seconds: float, rows: int) -> None:
    print(f"--- {label}: {rows:,} events (load average {os.getloadavg()[0]:.1f} at the end)")
    print(f"end-to-end: {sustained_rate(m.samples, rows):,.0f} events/s (sustained, slowest app, 10-90 %)")
    print(f"drained after {seconds:.0f} s ({rows / seconds:,.0f} events/s including start-up and training)")
    print("max consumer lag (messages): " + ", ".join(f"{k} {v:,}" for k, v in sorted(m.max_lag.items())))
    print("peak RSS (MB): " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(m.peak_rss_mb.items())))
    cpu = m.cpu_by_process()
    per_event = {name: seconds * 1e6 / rows for name, seconds in cpu.items()}
    total = sum(per_event.values())
    training = sum(v for k, v in per_event.items() if k.endswith("(training)"))
    print("CPU us/event: " + ", ".join(f"{k} {v:,.1f}" for k, v in sorted(per_event.items()))
          + f"; total {total:,.1f} (2 cores cap this configuration at ~{2e6 / max(total, 1e-9):,.0f} events/s; "
          f"{total - training:,.1f} without the daily trainings)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--pack", type=int, default=None, help="queries per message (default: the default's)")
    parser.add_argument("--encoding", default=None, help="replay encoding (default: workbench.defaults)")
    parser.add_argument("--json-days", type=int, default=1, help="days for the one-query-per-message run (0: skip)")
    parser.add_argument("--profile", type=Path, help="write a py-spy flame graph per app into this folder")
    args = parser.parse_args()

    packed_log = demo_log(args.days, args.instances)
    with broker() as settings:
        broker_pid = None
        from workbench.broker import LocalKafka

        if settings.manages_kafka:
            broker_pid = LocalKafka(settings).pid()
        pack, encoding = replay_format(args.pack, args.encoding)
        default = "default configuration: " if (args.pack, args.encoding) == (None, None) else ""
        print(f"load average {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} cores")
        m, seconds, rows = run(settings, packed_log, pack, encoding, broker_pid, args.profile)
        report(f"{default}{encoding}, up to {pack} queries per message, {args.days} days", m, seconds, rows)
        if args.json_days:
            json_log = demo_log(args.json_days, args.instances)
            m, seconds, rows = run(settings, json_log, 1, "json", broker_pid, args.profile)
            report(f"json, one query per message, {args.json_days} day(s)", m, seconds, rows)


if __name__ == "__main__":
    main()
