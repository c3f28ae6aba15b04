"""The synthetic log: determinism, and the Redset statistics of redset-stats.md section 9.

Statistics are computed with DuckDB SQL over the Parquet file. The classification below is the
rule set of pulse-study.md section 3.2 (first match wins), written inline on purpose.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest

from workbench.data import ANOMALY_KINDS, generate, validate
from workbench.exceptions import ConfigurationError

CLASSIFY = """
CASE
  WHEN was_cached THEN 'normal'
  WHEN query_type IN ('copy', 'unload') AND execution_duration_ms > 500 THEN 'network'
  WHEN query_type NOT IN ('copy', 'unload')
       AND (coalesce(num_joins, 0) > 1 OR coalesce(num_aggregations, 0) > 1)
       AND coalesce(mbytes_scanned, 0) > 0
       AND execution_duration_ms / (mbytes_scanned + 1) > 20.0
       AND execution_duration_ms > 1000 THEN 'cpu'
  WHEN query_type NOT IN ('copy', 'unload')
       AND coalesce(mbytes_scanned, 0) >= 2000
       AND execution_duration_ms / (mbytes_scanned + 1) < 0.061
       AND (coalesce(mbytes_spilled, 0) > 0 OR coalesce(num_scans, 0) > 1)
       AND execution_duration_ms > 1000 THEN 'io'
  WHEN coalesce(queue_duration_ms, 0) >= execution_duration_ms AND queue_duration_ms > 1000
       AND execution_duration_ms > 0
       AND coalesce(num_scans, 0) + coalesce(num_joins, 0) + coalesce(num_aggregations, 0) < 4
       THEN 'queue'
  ELSE 'normal'
END
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    kwargs = {"days": 2, "instances": 8, "rows_per_day": 20_000}
    a = generate(tmp_path / "a.parquet", seed=11, **kwargs)
    b = generate(tmp_path / "b.parquet", seed=11, **kwargs)
    c = generate(tmp_path / "c.parquet", seed=12, **kwargs)
    assert a.rows == b.rows and 35_000 < a.rows < 45_000
    assert _sha256(a.path) == _sha256(b.path)
    assert _sha256(a.path) != _sha256(c.path)
    assert validate(a.path).rows == a.rows
    assert a.seconds < 10


def test_bad_parameters_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"`days` parameter of generate\(\) .* Got 0 instead"):
        generate(tmp_path / "x.parquet", days=0)
    with pytest.raises(ConfigurationError, match=r"`start` .* like 2024-03-04. Got '04/03/2024'"):
        generate(tmp_path / "x.parquet", start="04/03/2024")
    assert not (tmp_path / "x.parquet").exists()


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    path = tmp_path_factory.mktemp("gen") / "log.parquet"
    summary = generate(path, days=3, instances=16, rows_per_day=150_000, seed=0)
    assert summary.rows > 350_000
    con = duckdb.connect()
    con.execute(f"CREATE VIEW q AS SELECT * FROM read_parquet('{path}')")
    return con


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple:
    return con.execute(sql).fetchone()


def test_file_is_valid_sorted_and_ids_unique(log: duckdb.DuckDBPyConnection) -> None:
    dupes, non_monotone = _one(log, """
        WITH x AS (SELECT instance_id, query_id,
                          lag(query_id) OVER (PARTITION BY instance_id ORDER BY arrival_timestamp, query_id) p
                   FROM q)
        SELECT count(*) - count(DISTINCT (instance_id, query_id)), count(*) FILTER (WHERE query_id < p) FROM x
    """)
    assert dupes == 0
    assert non_monotone > 100  # query_id is not monotone in arrival time
    assert log.execute("SELECT typeof(arrival_timestamp) FROM q LIMIT 1").fetchone()[0] == "TIMESTAMP WITH TIME ZONE"


def test_query_mix_and_cache_hits(log: duckdb.DuckDBPyConnection) -> None:
    select, cached, copy, unload, aborted = _one(log, """
        SELECT avg((query_type = 'select')::INT), avg(was_cached::INT), avg((query_type = 'copy')::INT),
               avg((query_type = 'unload')::INT), avg(was_aborted::INT) FROM q
    """)
    assert 0.20 <= select <= 0.26
    assert 0.08 <= cached <= 0.13
    assert 0.09 <= copy <= 0.13
    assert 0.003 <= unload <= 0.008
    assert 0.003 <= aborted <= 0.008
    # Cache hits: typed other, no fingerprint or table counts, source = earlier select, same user.
    n, typed_other, null_fp, null_tables, resolved, src_select, same_user, earlier = _one(log, """
        SELECT count(*), avg((c.query_type = 'other')::INT), avg((c.feature_fingerprint IS NULL)::INT),
               avg((c.num_permanent_tables_accessed IS NULL AND c.num_joins IS NULL)::INT),
               avg((s.query_id IS NOT NULL)::INT), avg((s.query_type = 'select')::INT),
               avg((s.user_id = c.user_id)::INT), avg((s.arrival_timestamp < c.arrival_timestamp)::INT)
        FROM q c LEFT JOIN q s ON s.instance_id = c.instance_id AND s.query_id = c.cache_source_query_id
        WHERE c.was_cached
    """)
    assert n > 10_000
    assert typed_other == null_fp == null_tables == resolved == src_select == same_user == earlier == 1.0


def test_execution_compile_queue_spill_scan(log: duckdb.DuckDBPyConnection) -> None:
    median, mean, p99, max_, compile_mean, compile_median, queue_share, spill_share = _one(log, """
        SELECT median(execution_duration_ms), avg(execution_duration_ms),
               quantile_cont(execution_duration_ms, 0.99), max(execution_duration_ms),
               avg(compile_duration_ms), median(compile_duration_ms),
               avg((queue_duration_ms > 0)::INT), avg((mbytes_spilled > 0)::INT) FROM q
    """)
    assert 20 <= median <= 150
    assert 1_200 <= mean <= 6_000
    assert 15_000 <= p99 <= 200_000
    assert max_ >= 1_800_000  # the tail reaches half an hour and more
    assert 1_500 <= compile_mean <= 4_000 and compile_median <= 50
    assert 0.015 <= queue_share <= 0.06
    assert 0.012 <= spill_share <= 0.035
    under_1gb, zero = _one(log, """
        SELECT avg((mbytes_scanned < 1000)::INT), avg((mbytes_scanned = 0)::INT) FROM q
        WHERE query_type NOT IN ('unload', 'other', 'vacuum') AND NOT was_aborted
    """)
    assert 0.65 <= under_1gb <= 0.85 and zero >= 0.15
    small, large = _one(log, """
        SELECT avg((mbytes_spilled > 0)::INT) FILTER (WHERE mbytes_scanned BETWEEN 200 AND 500),
               avg((mbytes_spilled > 0)::INT) FILTER (WHERE mbytes_scanned >= 10000)
        FROM q WHERE NOT label_anomaly
    """)
    assert large > 3 * small > 0  # spill rises with scan size


def test_diurnal_cycle_and_fleet_shape(log: duckdb.DuckDBPyConnection) -> None:
    ratio, peak_hour = _one(log, """
        WITH h AS (SELECT hour(arrival_timestamp) h, count(*) c FROM q GROUP BY 1)
        SELECT max(c) / min(c), arg_max(h, c) FROM h
    """)
    assert 1.8 <= ratio <= 2.8
    assert 14 <= peak_hour <= 18
    top2_share, serverless_null, weighted_size = _one(log, """
        WITH i AS (SELECT instance_id, count(*) n, any_value(cluster_size) s, count(cluster_size) k FROM q GROUP BY 1),
             r AS (SELECT *, row_number() OVER (ORDER BY n DESC) rk FROM i)
        SELECT sum(n) FILTER (WHERE rk <= 2) / sum(n), count(*) FILTER (WHERE k = 0),
               sum(s * n) FILTER (WHERE s IS NOT NULL) / sum(n) FILTER (WHERE s IS NOT NULL) FROM r
    """)
    assert top2_share >= 0.5  # top ~10% of instances hold about half the queries
    assert serverless_null >= 2  # serverless instances: cluster_size is NULL on every row
    assert 5.0 <= weighted_size <= 7.0


def test_repetition_and_bursts(log: duckdb.DuckDBPyConnection) -> None:
    repeat = _one(log, """
        WITH r AS (SELECT row_number() OVER (PARTITION BY instance_id, feature_fingerprint
                                             ORDER BY arrival_timestamp, query_id) rn
                   FROM q WHERE feature_fingerprint IS NOT NULL)
        SELECT avg((rn > 1)::INT) FROM r
    """)[0]
    assert 0.85 <= repeat <= 0.94
    top10_median = _one(log, """
        WITH c AS (SELECT instance_id, feature_fingerprint, count(*) n FROM q
                   WHERE feature_fingerprint IS NOT NULL GROUP BY ALL),
             r AS (SELECT *, row_number() OVER (PARTITION BY instance_id ORDER BY n DESC) rk,
                          sum(n) OVER (PARTITION BY instance_id) tot FROM c),
             s AS (SELECT instance_id, sum(n) FILTER (WHERE rk <= 10) / any_value(tot) AS top_share FROM r
                   GROUP BY 1 HAVING any_value(tot) >= 1000)
        SELECT median(top_share) FROM s
    """)[0]
    assert 0.30 <= top10_median <= 0.60
    burst = _one(log, """
        WITH y AS (SELECT feature_fingerprint f, epoch_us(arrival_timestamp) t,
                          lag(epoch_us(arrival_timestamp)) OVER w lt, lead(epoch_us(arrival_timestamp)) OVER w nt
                   FROM q WINDOW w AS (PARTITION BY instance_id, user_id, feature_fingerprint
                                       ORDER BY arrival_timestamp))
        SELECT avg(CASE WHEN f IS NOT NULL AND (t - lt <= 60e6 OR nt - t <= 60e6) THEN 1 ELSE 0 END) FROM y
    """)[0]
    assert 0.60 <= burst <= 0.75


def test_classification_mix(log: duckdb.DuckDBPyConnection) -> None:
    shares = dict(log.execute(f"""
        SELECT {CLASSIFY} AS c, count(*) / (SELECT count(*) FROM q) FROM q GROUP BY 1
    """).fetchall())
    assert set(shares) == {"normal", "network", "cpu", "queue", "io"}
    assert 0.89 <= shares["normal"] <= 0.95
    assert 0.030 <= shares["network"] <= 0.060
    assert 0.012 <= shares["cpu"] <= 0.032
    assert 0.003 <= shares["queue"] <= 0.012
    assert 0.0008 <= shares["io"] <= 0.005


def test_anomalies_present_labelled_and_detectable(log: duckdb.DuckDBPyConnection) -> None:
    rate, kinds_ok = _one(log, """
        SELECT avg(label_anomaly::INT), bool_and((label_kind IS NULL) = (NOT label_anomaly)) FROM q
    """)
    assert 0.0015 <= rate <= 0.0025  # default anomaly_rate 0.002
    assert kinds_ok
    per_kind = dict(log.execute("SELECT label_kind, count(*) FROM q WHERE label_anomaly GROUP BY 1").fetchall())
    assert set(per_kind) == set(ANOMALY_KINDS)
    total = sum(per_kind.values())
    assert all(0.18 <= n / total <= 0.32 for n in per_kind.values())
    # Each anomaly runs >= 20x its fingerprint's typical (median, non-anomalous) execution time.
    rows = log.execute("""
        WITH typical AS (SELECT instance_id, feature_fingerprint, median(execution_duration_ms) m
                         FROM q WHERE NOT label_anomaly GROUP BY ALL)
        SELECT label_kind, quantile_cont(execution_duration_ms / greatest(m, 1), 0.05),
               avg((queue_duration_ms > 3 * execution_duration_ms)::INT),
               avg((mbytes_spilled >= 1000)::INT)
        FROM q JOIN typical USING (instance_id, feature_fingerprint)
        WHERE label_anomaly GROUP BY 1
    """).fetchall()
    stats = {kind: (p05, queued, spilled) for kind, p05, queued, spilled in rows}
    for kind, (p05, _, _) in stats.items():
        assert p05 >= 15, f"{kind}: 5% of anomalies are only {p05:.1f}x their fingerprint's median"
    assert stats["queue_storm"][1] == 1.0
    assert stats["spill_storm"][2] == 1.0
    scan_ratio = _one(log, """
        WITH typical AS (SELECT instance_id, feature_fingerprint, median(mbytes_scanned) m
                         FROM q WHERE NOT label_anomaly GROUP BY ALL)
        SELECT quantile_cont(mbytes_scanned / greatest(m, 10), 0.05)
        FROM q JOIN typical USING (instance_id, feature_fingerprint) WHERE label_kind = 'scan_explosion'
    """)[0]
    assert scan_ratio >= 30


def test_stress_pack_kinds_families_and_window_labels(tmp_path: Path) -> None:
    from workbench.data.generator import (
        ALL_KINDS,
        KIND_FAMILY,
        WINDOW_KINDS,
        resolve_kinds,
        window_labels,
        window_labels_path,
    )

    assert len(ALL_KINDS) >= 10 and set(KIND_FAMILY.values()) == {"point", "contextual", "collective"}
    kwargs = {"days": 2, "instances": 6, "rows_per_day": 60_000, "seed": 3, "anomaly_rate": 0.004}
    a = generate(tmp_path / "a.parquet", kinds="all", **kwargs)
    b = generate(tmp_path / "b.parquet", kinds="all", **kwargs)
    assert _sha256(a.path) == _sha256(b.path)  # reproducible with a seed
    assert validate(a.path).rows == a.rows
    con = duckdb.connect()
    kinds = dict(con.execute(f"SELECT label_kind, count(*) FROM '{a.path}' WHERE label_anomaly GROUP BY 1").fetchall())
    assert len(kinds) >= 10, kinds
    windows = window_labels(a.path).to_pandas()
    assert len(windows) and set(windows["kind"]) <= set(WINDOW_KINDS)
    # Every labelled window holds queries labelled with its kind.
    have = set(con.execute(f"""SELECT instance_id, epoch_ms(time_bucket(INTERVAL 10 MINUTE, arrival_timestamp)),
                                      label_kind FROM '{a.path}' WHERE label_anomaly GROUP BY ALL""").fetchall())
    for inst, ws, kind in zip(windows["instance_id"], window_labels(a.path).column("window_start").cast("int64")
                              .to_pylist(), windows["kind"], strict=True):
        assert (inst, ws, kind) in have
    # The classic log has no sidecar and only the classic kinds; bad names say what is allowed.
    c = generate(tmp_path / "c.parquet", **kwargs)
    assert not window_labels_path(c.path).exists() and window_labels(c.path).num_rows == 0
    classic = {k for (k,) in con.execute(f"SELECT DISTINCT label_kind FROM '{c.path}' WHERE label_anomaly").fetchall()}
    assert classic <= set(ANOMALY_KINDS)
    with pytest.raises(ConfigurationError, match="`kinds` parameter"):
        resolve_kinds("slow_fingerprint,nope")


def test_a_generate_killed_before_its_log_is_in_place_leaves_no_window_labels_of_another_log(tmp_path: Path) -> None:
    """The new log's window labels were put beside the old log first: killed between the two, the old log had
    the labels of another one beside it."""
    import os
    import subprocess
    import sys

    from workbench.data.generator import window_labels_path

    out = tmp_path / "log.parquet"
    generate(out, days=2, instances=3, rows_per_day=3000, seed=1, kinds="all", progress=False)
    old_log = hashlib.sha256(out.read_bytes()).hexdigest()
    assert window_labels_path(out).exists()
    killed = ("import os, pathlib, sys\n"
              "from workbench.data import generate\n"
              "real = pathlib.Path.replace\n"
              "def replace(self, target):\n"
              "    if pathlib.Path(target).name == 'log.parquet':\n"
              "        os._exit(9)  # as kill -9 just before the new log is put in place\n"
              "    return real(self, target)\n"
              "pathlib.Path.replace = replace\n"
              "generate(sys.argv[1], days=2, instances=3, rows_per_day=3000, seed=2, kinds='all', progress=False)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run([sys.executable, "-c", killed, str(out)], env=env, timeout=120).returncode == 9
    assert hashlib.sha256(out.read_bytes()).hexdigest() == old_log
    assert not window_labels_path(out).exists()  # no labels rather than another log's
    generate(out, days=2, instances=3, rows_per_day=3000, seed=2, kinds="all", progress=False)
    assert window_labels_path(out).exists() and not list(tmp_path.glob("*.partial"))
