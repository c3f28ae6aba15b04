"""Throughput of the ML scoring: ONNX inference at batch sizes 1k / 8k / 64k, and the scoring app end to end.

Usage: ``.venv/bin/python benchmarks/scoring.py [--rows-per-day 100000] [--pack 100] [--profile DIR]
[--skip-inference] [--inputs json,packed] [--repeat N]``

1. A model is trained on day 1 of a generated 2-day log (not timed) and registered as current.
2. Inference rows/s (same method as ``benchmarks/scoring_onnx.py``): both ONNX regressors on a
   prepared matrix, the full :meth:`LoadedModel.predict` (features + models + detector), and
   :meth:`Scorer.score` (plus the output batch).
3. The scoring application (``workbench app scoring --no-train`` in its own process, against a
   private Kafka unless KAFKA_BOOTSTRAP_SERVERS is set) consumes the whole log replayed as JSON
   one-per-message and as packed Arrow messages; every event is scored by the pre-trained model,
   written to shards, and its anomalies published. events/s = events / (time from the app's first
   message to its last durable batch), read from the app's status file; start-up and the idle
   wait at the end are excluded. ``cpu_us_per_event`` is the app's process CPU time (all threads)
   over the same span per event: the figure to compare on a shared, loaded machine. The child's
   wall time and peak RSS are printed too, and the load average before and after.

``--profile DIR`` runs the app under ``py-spy record`` (PyPI; non-blocking, CPU-active samples
only): ``DIR/scoring-<json|packed>.txt`` holds the collapsed stacks (for flame graph tools) and
the top frames by own and total samples go to stderr (``--native``: with C frames such as the
GC, Arrow kernels and ONNX Runtime; blocking sampling, so it slows the app down). Start-up is in
the profile too (small next to the drain). ``--repeat N`` runs the inputs N times interleaved
(json, packed, json, ...), so before/after figures can be taken in the same conditions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pyarrow as pa
import pyarrow.parquet as pq
from _harness import WORKBENCH, broker, demo_log, run_child, settings_env, summarize_profile
from scoring_onnx import _rate

from workbench.broker import ensure_topics
from workbench.config import Settings
from workbench.ml._testing import day_slice
from workbench.ml._train import train_table
from workbench.ml.registry import ModelRegistry
from workbench.ml.scorer import LoadedModel, Scorer
from workbench.pipeline import read_app_status
from workbench.replay import Replay


def bench_inference(models_dir: os.PathLike[str], fresh: pa.Table) -> list[dict]:
    registry = ModelRegistry(models_dir)  # type: ignore[arg-type]
    model = LoadedModel.load(registry, registry.current())
    scorer = Scorer(models_dir)  # type: ignore[arg-type]
    out = []
    for size in (1_000, 8_192, 65_536):
        batch = fresh.slice(0, size).combine_chunks().to_batches()[0]
        X = model.features.transform(batch)
        out.append({
            "batch": size,
            "models_only_rows_s": round(_rate(lambda X=X: model.regressors.predict_log(X), size)),
            "features_models_detector_rows_s": round(_rate(lambda b=batch: model.predict(b), size)),
            "scorer_score_rows_s": round(_rate(lambda b=batch: scorer.score(b), size)),
        })
    return out


def _py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return exe


def bench_app(settings: Settings, log: os.PathLike[str], pack: int, batch_rows: int,
              profile: Path | None = None, native: bool = False) -> dict:
    suffix = uuid.uuid4().hex[:6]
    s = settings.with_overrides(topic_query_events=f"bench.scoring.events.{suffix}",
                                topic_anomalies=f"bench.scoring.anomalies.{suffix}",
                                topic_dead_letter=f"bench.scoring.dead.{suffix}")
    # a private home per run (own shards, status, consumer state), sharing the trained model
    home = settings.home / f"run-{suffix}"
    home.mkdir(parents=True, exist_ok=True)
    os.symlink(settings.models_dir, home / "models")
    s = s.with_overrides(home=home)
    ensure_topics(s)
    Replay(log, settings=s, speedup=0, pack=pack, replay_id=f"bench-{suffix}", reset=True).run()
    command = [*WORKBENCH, "app", "scoring", "--no-train", "--idle-exit", "15", "--timeout", "900",
               "--batch-rows", str(batch_rows)]
    out = None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        out = profile / f"scoring-{'json' if pack == 1 else 'packed'}.txt"
        # --native shows C frames (the GC, Arrow kernels, ONNX) but needs blocking sampling
        sampling = ["--native"] if native else ["--nonblocking"]
        command = [_py_spy(), "record", "--rate", "200", "--format", "raw", *sampling, "--output", str(out),
                   "--", *command]
    child = run_child(command, env=settings_env(s))
    if out is not None and out.exists():
        summarize_profile(out)
    if child.returncode != 0:
        raise RuntimeError(f"scoring app failed rc={child.returncode}: {child.stderr[-2000:]}")
    status = read_app_status(s, "scoring") or {}
    counters, info = status.get("counters", {}), status.get("info", {})
    span = (info.get("last_batch_at") or 0) - (info.get("first_message_at") or 0)
    events = counters.get("events", 0)
    cpu = info.get("cpu_s_first_to_last_batch")
    return {"pack": pack, "events": events,
            "cpu_us_per_event": round(cpu * 1e6 / events, 1) if cpu is not None and events else None,
            "scored": counters.get("scored"), "batches": counters.get("batches"),
            "anomalies": counters.get("anomalies"), "seconds": round(span, 2),
            "events_per_s": round(events / span) if span > 0 else None, "child_wall_s": round(child.seconds, 1),
            "child_peak_rss_mb": round(child.peak_rss_mb), "timings_s": info.get("timings_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows-per-day", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--pack", type=int, default=100)
    parser.add_argument("--batch-rows", type=int, default=16_384)
    parser.add_argument("--skip-app", action="store_true", help="inference figures only")
    parser.add_argument("--skip-inference", action="store_true", help="app figures only")
    parser.add_argument("--inputs", default="json,packed", help="app inputs to run: json, packed or both")
    parser.add_argument("--repeat", type=int, default=1, help="run the app inputs this many times, interleaved")
    parser.add_argument("--profile", type=Path, help="record the app with py-spy into this folder")
    parser.add_argument("--native", action="store_true", help="--profile with C frames (slows the app down)")
    args = parser.parse_args()
    log = demo_log(days=2, instances=args.instances, rows_per_day=args.rows_per_day)
    table = pq.read_table(log)
    first = table.column("arrival_timestamp")[0].as_py().date()
    with broker() as settings:
        result = train_table(settings.models_dir, day_slice(table, first), first, window_days=1)
        fresh = day_slice(table, first + dt.timedelta(days=1))
        out: dict = {"cores": os.cpu_count(), "load_average_1min_before": round(os.getloadavg()[0], 2),
                     "log_rows": table.num_rows, "model": result.version,
                     "trees": result.meta["n_iter"]}
        if not args.skip_inference:
            out["inference"] = bench_inference(settings.models_dir, fresh)
        packs = {"json": 1, "packed": args.pack}
        for run in range(args.repeat if not args.skip_app else 0):
            for name in args.inputs.split(","):
                figures = bench_app(settings, log, packs[name], args.batch_rows, args.profile, args.native)
                figures["load_average_1min"] = round(os.getloadavg()[0], 2)
                out[f"app_{name}" if args.repeat == 1 else f"app_{name}_{run + 1}"] = figures
        out["load_average_1min_after"] = round(os.getloadavg()[0], 2)
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
