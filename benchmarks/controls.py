"""How soon a click on the replay's controls shows: pause and resume, seen through the status.

Usage: ``.venv/bin/python benchmarks/controls.py [--speed 600] [--trials 4] [--every 5]``

Starts the whole workbench on the cached 4-day demo log (apps included, against a private Kafka
or KAFKA_BOOTSTRAP_SERVERS) at ``--speed``, then, every ``--every`` seconds, sends a pause and
polls the replay's status (what the panel and ``workbench replay-control status`` read) until it
says paused, reads the full :meth:`Workbench.status` once there (the panel's every refresh: lag per
app, counts), resumes and polls until running again. Printed per trial: seconds from the command
to the first status that shows it, the one status read that showed it, and the full status read.
The panel refreshes its counters every second, so what a user waits is about the first figure
plus the full read plus up to a second.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _harness import broker, demo_log, private_run

from workbench.runtime import Workbench


def _until(wb: Workbench, state: str, limit_s: float = 60.0) -> tuple[float, float]:
    """Seconds until the replay status says ``state``, and the read that said it."""
    started = time.monotonic()
    while True:
        before = time.monotonic()
        status = wb.replay_status()
        after = time.monotonic()
        if status is not None and status.state == state:
            return after - started, after - before
        if after - started > limit_s:
            raise SystemExit(f"the replay did not show {state!r} within {limit_s:g} s: {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", default="600", help="replay speed (a number or max)")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--every", type=float, default=5.0, help="seconds of running between trials")
    args = parser.parse_args()
    data = demo_log()
    with broker() as settings:
        wb = Workbench.start(data=data, speedup=args.speed, settings=private_run(settings, "controls"))
        try:
            _until(wb, "running")
            pause, resume, full = [], [], []
            for trial in range(args.trials):
                time.sleep(args.every)
                wb.pause()
                shown, read = _until(wb, "paused")
                began = time.monotonic()
                wb.status()
                full.append(time.monotonic() - began)
                pause.append(shown)
                time.sleep(1.0)
                wb.resume()
                resumed, _ = _until(wb, "running")
                resume.append(resumed)
                print(f"trial {trial}: pause shown after {shown:.2f} s (that read {read:.2f} s), full status "
                      f"{full[-1]:.2f} s; resume shown after {resumed:.2f} s", flush=True)
            print(f"median over {args.trials} at {args.speed}x: pause {statistics.median(pause):.2f} s, resume "
                  f"{statistics.median(resume):.2f} s, full status right after a pause {statistics.median(full):.2f} s")
        finally:
            wb.stop(kafka=False)


if __name__ == "__main__":
    main()
