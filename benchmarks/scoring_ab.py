"""A/B of the scoring app's loop step in one process: Quix's per-message path against the batched consume.

Usage: ``.venv/bin/python benchmarks/scoring_ab.py [--rounds 2] [--rows 60000]``

One topic of one-query-per-message JSON events (no model: rows are decoded, guarded and stored
unscored, so the figure is the per-message path, not ONNX); the app runs alternately with Quix's
per-message step and with :func:`workbench.pipeline._quix.consume_in_batches`, each with its own
consumer group and home, in the same process and minute, so a shared machine's load hits both
alike. Printed: process CPU microseconds per event from the first message to the last durable
batch (all threads), the sink's timings and the load average.
"""

from __future__ import annotations

import argparse
import os
import uuid

from _harness import broker, demo_log

import workbench.pipeline.scoring._app as scoring_app
from workbench.broker import ensure_topics
from workbench.pipeline.scoring import ScoringApp
from workbench.replay import Replay

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--rounds", type=int, default=2)
parser.add_argument("--rows", type=int, default=60_000)
args = parser.parse_args()
real = scoring_app.consume_in_batches
log = demo_log(days=1, instances=8, rows_per_day=args.rows)
with broker() as settings:
    s = settings.with_overrides(topic_query_events=f"ab.events.{uuid.uuid4().hex[:6]}")
    ensure_topics(s)
    Replay(log, settings=s, speedup=0, pack=1, replay_id="ab", reset=True).run()
    for rnd in range(args.rounds):
        for mode in ("quix-per-message", "batched"):
            scoring_app.consume_in_batches = real if mode == "batched" else (lambda app, fn, max_messages=0: None)
            home = settings.home / f"{mode}-{rnd}"
            app = ScoringApp(s.with_overrides(home=home), train=False, group=f"ab-{mode}-{rnd}")
            app.build()
            result = app.run(idle_exit=4.0, timeout=300)
            info = result.info
            cpu = app.sink.last_batch_cpu - app.sink.first_message_cpu
            ev = result.counters["events"]
            print(f"{mode} round {rnd}: {ev} events, {cpu * 1e6 / ev:.1f} CPU us/event (first msg to last batch), "
                  f"timings {info.get('timings_s')}, load {os.getloadavg()[0]:.1f}", flush=True)
