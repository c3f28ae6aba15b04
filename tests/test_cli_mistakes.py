"""A careless user's commands: each mistake is one line naming it (rc != 0), never a traceback, and
nothing is left half-written. Found by a session that tried them (the cases named in each test)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import make_log
from workbench import cli
from workbench.config import Settings


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err


def test_a_training_day_after_the_logs_last_day_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`train --day 2024-03-10` on a log of 03-04 trained a version named after a day it never saw, made current."""
    log = make_log(tmp_path / "log.parquet", rows=2000, spacing_s=60.0)  # 2024-03-04 .. 03-05 09:19
    code, err = _run(capsys, "--home", str(tmp_path / "home"), "train", "--day", "2024-03-10", "--data", str(log))
    assert code == 2 and "--day 2024-03-10 is after the last day with events (2024-03-05)" in err
    assert not (tmp_path / "home" / "models").exists() or not any((tmp_path / "home" / "models").iterdir())
    with pytest.raises(SystemExit) as info:
        cli.main(["--home", str(tmp_path / "home"), "train", "--day", "2024-03-05", "--data", str(log),
                  "--max-rows", "5"])
    assert info.value.code == 2 and "--max-rows: must be >= 1,000, got 5" in capsys.readouterr().err
    for seed in ("-1", "99999999999"):  # a raw NumPy / scikit-learn error after the window was read (tester, 40th)
        with pytest.raises(SystemExit) as info:
            cli.main(["--home", str(tmp_path / "home"), "train", "--day", "2024-03-05", "--data", str(log),
                      "--seed", seed])
        assert info.value.code == 2 and "--seed: must be from 0 to 4,294,967,295" in capsys.readouterr().err
    from workbench.ml._train import train_table

    with pytest.raises(ValueError, match=r"'seed' parameter of train_table must be an integer in \[0, 4,294,967,295\]"):
        train_table(tmp_path / "models", pq.read_table(log), dt.date(2024, 3, 5), seed=2**32)


def test_evaluating_a_day_outside_the_log_names_the_logs_days(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`evaluate --day` outside the log read "(rows=0, columns with labels: True)"."""
    from workbench.data.generator import generate

    log = tmp_path / "log.parquet"
    generate(log, days=2, instances=2, rows_per_day=3000, seed=1, progress=False)
    home = ["--home", str(tmp_path / "home")]
    code, err = _run(capsys, *home, "train", "--day", "2024-03-04", "--data", str(log))
    assert code == 0, err
    code, err = _run(capsys, *home, "evaluate", "--day", "2024-03-09", "--data", str(log))
    assert code == 2 and "has no rows on 2024-03-09: its arrivals run from 2024-03-04 to 2024-03-05" in err


def test_a_day_in_another_format_is_told_the_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`evaluate --day 07/03/2024` read "invalid fromisoformat value" (blind test, 37th session)."""
    for command in (["evaluate", "--data", str(tmp_path / "log.parquet")], ["train"]):
        with pytest.raises(SystemExit) as info:
            cli.main(["--home", str(tmp_path / "home"), *command, "--day", "07/03/2024"])
        err = capsys.readouterr().err
        assert info.value.code == 2 and "'07/03/2024' is not a day: write it as YYYY-MM-DD" in err, err


def test_an_error_no_check_names_is_one_line_and_the_traceback_is_for_verbose(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`generate --out <a folder>` ended in IsADirectoryError's traceback."""
    (tmp_path / "out").mkdir()
    argv = ["--home", str(tmp_path / "home"), "generate", "--days", "1", "--instances", "1", "--rows-per-day",
            "500", "--out", str(tmp_path / "out")]
    code, err = _run(capsys, *argv)
    assert code == 1 and err.strip().count("\n") == 0
    assert err.startswith("workbench: error: IsADirectoryError: ") and "run again with --verbose" in err
    assert cli.main(["--verbose", *argv]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (a folder nothing can be made in)")
def test_a_home_that_cannot_be_made_is_named_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A home under a folder that cannot be made ended in "FileNotFoundError: [Errno 2] ..." (helper finding)."""
    code, err = _run(capsys, "--home", "/proc/no-such-folder/home", "generate", "--days", "1", "--instances", "1",
                     "--rows-per-day", "500")
    assert code == 2 and err.strip() == "workbench: error: No such file or directory: /proc/no-such-folder", err


def test_generate_names_a_bad_seed_and_a_nan_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--home", str(tmp_path / "home"), "generate", "--days", "1", "--instances", "1", "--rows-per-day", "500",
            "--out", str(tmp_path / "g.parquet")]
    code, err = _run(capsys, *base, "--seed", "-1")
    assert code == 2 and "The `seed` parameter of generate() must be an integer >= 0. Got -1 instead." in err
    code, err = _run(capsys, *base, "--anomaly-rate", "nan")  # generated a log of 0 labelled anomalies
    assert code == 2 and "The `anomaly_rate` parameter of generate() must be a float between 0.0 and 0.2" in err
    assert not (tmp_path / "g.parquet").exists()


@pytest.mark.parametrize("split", ["none", "day"])
def test_a_prepare_whose_filters_match_nothing_keeps_the_earlier_output(tmp_path: Path, split: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped instance id deleted the log an earlier run had prepared under the same name (a folder of
    day files became an empty folder, and the summary raised IndexError)."""
    import hashlib

    log = make_log(tmp_path / "log.parquet", rows=500)
    out = tmp_path / ("p" if split == "day" else "p.parquet")
    base = ["--home", str(tmp_path / "home"), "prepare", str(log), "--out", str(out), "--no-progress",
            *(["--split", split] if split == "day" else [])]
    code, _ = _run(capsys, *base)
    assert code == 0

    def digest() -> dict[str, str]:
        files = sorted(out.rglob("*.parquet")) if out.is_dir() else [out]
        return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}

    before = digest()
    assert before
    sample = out.with_name(out.name + ".rejected.jsonl")
    sample.write_text('{"reason": "the earlier output\'s own sample"}\n')
    code, err = _run(capsys, *base, "--instances", "999999")
    assert code == 1 and "nothing was written (an earlier output of the same name is kept)" in err
    assert "Traceback" not in err and digest() == before
    assert "the earlier output's own sample" in sample.read_text()  # it was replaced (tester B, 33rd session)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_an_app_counted_twice_in_app_instances_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """`--app-instances scoring=2,scoring=3` started 3 scoring processes without a word (tester B, 33rd session)."""
    with pytest.raises(SystemExit) as info:
        cli.main(["start", "--app-instances", "scoring=2,scoring=3"])
    assert info.value.code == 2 and "names scoring more than once" in capsys.readouterr().err


def test_prepare_names_a_bad_memory_limit_and_leaves_no_empty_log(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    log = make_log(tmp_path / "log.parquet", rows=500)
    home = tmp_path / "home"
    code, err = _run(capsys, "--home", str(home), "prepare", str(log), "--out", str(tmp_path / "p.parquet"),
                     "--memory-limit", "lots")
    assert code == 2 and "prepare cannot start DuckDB with memory_limit='lots'" in err
    assert not (home / "tmp").exists() or not any((home / "tmp").iterdir())  # its spill folder went too
    code, err = _run(capsys, "--home", str(home), "prepare", str(log), "--out", str(tmp_path / "p.parquet"),
                     "--start", "2030-01-01", "--no-progress")
    assert code == 1 and "nothing was written" in err and not (tmp_path / "p.parquet").exists()
    for typo in ("24,,31", "24,31,"):  # a list of two ids (24 and 31) before
        with pytest.raises(SystemExit) as info:
            cli.main(["--home", str(home), "prepare", str(log), "--out", str(tmp_path / "p.parquet"),
                      "--instances", typo])
        expected = f"--instances takes comma-separated instance ids such as 3,17,42. Got {typo!r}"
        assert info.value.code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "p.parquet").exists()


def test_prepare_takes_instance_ids_apart_or_comma_separated(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`prepare --instances 1 3 LOG` said "unrecognized arguments: 3" (and several values would have
    swallowed the sources after them)."""
    import pyarrow.parquet as pq

    log = make_log(tmp_path / "log.parquet", rows=600, instances=3)
    home = ["--home", str(tmp_path / "home")]
    outs = {}
    for name, argv in {"comma": ["prepare", str(log), "--instances", "1,3"],
                       "apart, sources after": ["prepare", "--instances", "1", "3", str(log)],
                       "apart, sources before": ["prepare", str(log), "--instances", "1", "3"]}.items():
        out = tmp_path / f"{len(outs)}.parquet"
        code, err = _run(capsys, *home, *argv, "--out", str(out), "--no-progress")
        assert code == 0, (name, err)
        outs[name] = pq.read_table(out)
    first = outs["comma"]
    assert sorted(set(first.column("instance_id").to_pylist())) == [1, 3]
    assert all(table.equals(first) for table in outs.values())

    code, err = _run(capsys, *home, "prepare", "--instances", "1", "3", "--out", str(tmp_path / "x.parquet"))
    assert code == 2 and "name at least one SRC" in err and not (tmp_path / "x.parquet").exists()
    with pytest.raises(SystemExit) as info:  # a typo among the ids is an id typo, not a source
        cli.main([*home, "prepare", str(log), "--out", str(tmp_path / "x.parquet"), "--instances", "3", "24,,31"])
    assert info.value.code == 2 and "Got '24,,31'" in capsys.readouterr().err


def test_replay_control_of_a_home_whose_kafka_is_not_running_steers_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """On an idle home it read (and would have steered) another home's replay on the default port."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    code, err = _run(capsys, "--home", str(tmp_path / "home"), "replay-control", "seek", "2024-03-05")
    assert code == 2 and f"the local Kafka of {tmp_path / 'home'} is not running" in err


def test_rescore_and_status_name_bad_times_and_intervals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "--home", str(tmp_path / "home"), "rescore", "--version", "current", "--start",
                     "notadate")
    assert code == 2 and "Got 'notadate' instead" in err
    with pytest.raises(SystemExit) as info:
        cli.main(["--home", str(tmp_path / "home"), "status", "--watch", "-1"])
    assert info.value.code == 2 and "must be a number of seconds > 0" in capsys.readouterr().err


def test_report_parameters_are_checked_before_any_notebook_runs(tmp_path: Path) -> None:
    """`report --day 2024-13-01` ran every notebook and succeeded; a bad start ran them all, then failed."""
    from workbench.reports import ReportError, run_report

    settings = Settings(home=tmp_path / "home", reports_dir=tmp_path / "reports")
    started = time.monotonic()
    for params, words in (({"day": "2024-13-01"}, "The `day` parameter must be a UTC day"),
                          ({"start": "notadate"}, "The `start` parameter must be an ISO-8601 time"),
                          ({"instances": "abc"}, "The `instances` parameter must be integer ids")):
        with pytest.raises(Exception, match=words):
            run_report(settings, run_id="r", params=params, progress=False)
    assert time.monotonic() - started < 10 and not (tmp_path / "reports" / "r").exists()
    # `report --data missing` named the notebooks' `labels_path` parameter, which the user never typed
    with pytest.raises(ReportError, match=r"The labelled log \(--data, data=\) '.*missing\.parquet' does not exist"):
        run_report(settings, run_id="r", data=tmp_path / "missing.parquet", progress=False)
    (tmp_path / "reports").mkdir(exist_ok=True)
    (tmp_path / "reports" / "taken").write_text("a file")
    with pytest.raises(ReportError, match="exists and is a file"):
        run_report(settings, run_id="taken", progress=False)



def test_a_quoted_glob_as_the_log_is_told_to_be_a_folder_or_prepared(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Tester A, 33rd session: `validate 'logs/*.parquet'` said the log "does not exist"."""
    for name in ("a", "b"):
        make_log(tmp_path / f"{name}.parquet", rows=100, spacing_s=60.0)
    pattern = str(tmp_path / "*.parquet")
    code, err = _run(capsys, "validate", pattern)
    assert code == 2 and f"Query log '{pattern}' is a pattern (2 files match)" in err
    assert f"`workbench prepare '{pattern}' --out DIR --split day`" in err


def test_validate_checks_several_logs_each_as_its_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two files were "unrecognized arguments"; now each is checked, and the exit code is the worst."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = make_log(tmp_path / "good.parquet", rows=100, spacing_s=60.0)
    table = pq.read_table(good)
    durations = table.column("execution_duration_ms").to_pylist()
    durations[3] = -1
    index = table.schema.get_field_index("execution_duration_ms")
    pq.write_table(table.set_column(index, "execution_duration_ms", pa.array(durations, pa.int64())),
                   tmp_path / "bad.parquet")
    assert cli.main(["validate", str(good), str(tmp_path / "bad.parquet")]) == 1
    out = capsys.readouterr().out
    assert f"OK {good}" in out and "row 3" in out and "execution_duration_ms" in out
    assert cli.main(["validate", str(good), str(good)]) == 0
    # a log that cannot be read is said, and the next is still checked (a review of the 34th session)
    assert cli.main(["validate", str(tmp_path / "nope.parquet"), str(good)]) == 2
    captured = capsys.readouterr()
    assert "nope.parquet' does not exist" in captured.err and f"OK {good}" in captured.out
