"""CPU cost of the event decoder (:func:`workbench.data.codec.decode_values`) per event, no Kafka.

Usage: ``.venv/bin/python benchmarks/codec.py [--rows 100000] [--batch 2000] [--pack 100] [--rounds 5]``

Generates a log (seeded, not timed), encodes its first ``--rows`` rows as JSON one-per-message
(headers and keys as the replay sends them) and as packed Arrow (``--pack`` rows per message),
then decodes them in batches of ``--batch`` messages, as the apps do. Each round times every
variant once, interleaved, so a busy neighbour slows all of them alike; the figure per variant is
the best round's process CPU time per event (µs). ``reference`` is the per-message path
(``codec._decode_values(..., json_fast=False)``), the one the fast path must agree with.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from workbench.data import codec
from workbench.data.generator import generate
from workbench.data.schema import COLUMNS


def _messages(rows: int, pack: int) -> dict[str, tuple[list, list, list]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.parquet"
        generate(path, days=1, instances=16, seed=7, rows_per_day=int(rows * 1.3))
        table = pq.read_table(path).slice(0, rows).sort_by([("instance_id", "ascending")])
    batch = table.select(list(COLUMNS)).combine_chunks().to_batches()[0]
    json_values = codec.encode_json(batch)
    ids = batch.column("instance_id").to_pylist()
    json_msgs = (json_values, [codec.message_headers("json", 1)] * len(ids), [str(i).encode() for i in ids])
    packed_values, packed_headers, packed_keys = [], [], []
    start = 0
    while start < batch.num_rows:  # packs of one instance, as the replay sends them
        end = min(start + pack, batch.num_rows)
        while ids[end - 1] != ids[start]:
            end -= 1
        piece = batch.slice(start, end - start)
        packed_values.append(codec.encode_arrow(piece))
        packed_headers.append(codec.message_headers("arrow", piece.num_rows))
        packed_keys.append(str(ids[start]).encode())
        start = end
    return {"json": json_msgs, "packed": (packed_values, packed_headers, packed_keys)}


def _cpu_us_per_event(decode: Callable, messages: tuple[list, list, list], batch: int) -> float:
    values, headers, keys = messages
    events = 0
    t0 = time.process_time()
    for start in range(0, len(values), batch):
        decoded = decode(values[start:start + batch], headers=headers[start:start + batch],
                         keys=keys[start:start + batch])
        events += decoded.batch.num_rows
    return (time.process_time() - t0) * 1e6 / events


def main() -> None:
    """Print the CPU µs per event of each decoder variant (best of ``--rounds`` interleaved rounds)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2000, help="messages per decode_values call (JSON)")
    parser.add_argument("--pack", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    messages = _messages(args.rows, args.pack)
    variants = {"json decode_values": (codec.decode_values, "json", args.batch),
                "packed decode_values": (codec.decode_values, "packed", max(1, args.batch // args.pack))}
    if hasattr(codec, "_decode_values"):  # absent before the fast path existed (to time an older checkout)
        reference = functools.partial(codec._decode_values, encodings=None, json_fast=False)
        variants["json reference"] = (reference, "json", args.batch)
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(args.rounds):
        for name, (decode, kind, batch) in variants.items():
            best[name] = min(best[name], _cpu_us_per_event(decode, messages[kind], batch))
    print(f"rows={args.rows} batch={args.batch} pack={args.pack} rounds={args.rounds} "
          f"load={os.getloadavg()[0]:.2f}")
    for name, us in best.items():
        print(f"{name:24s} {us:7.2f} cpu_us_per_event")


if __name__ == "__main__":
    main()
