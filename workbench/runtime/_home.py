"""Which log a home's results come from, and clearing them for a fresh start.

Every write of the pipeline is idempotent per query, so replaying the same log into a home again
adds nothing twice. Another log is different: its rows joined the first log's shards, its events
were scored by the first log's models (trained on none of its own), and its events were counted
into the first log's windows (before closed windows opened again for rows never sent, a second log of
the same days lost 74 % of its events to lateness, silently). So :func:`check_log` refuses a log
other than the one a home holds results of, and :func:`clear_results` empties the home for ``workbench start --fresh``.

The identity is the log's resolved path, its rows, its first and last arrival and its content's
fingerprint (the replay's, a hash of the Parquet footers and sizes): the same file replayed again
matches, and so does a byte-identical copy or a moved file (the replay resumes its saved position by
the same fingerprint); another file, or the same path rewritten with other rows, does not.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workbench.config import Settings
from workbench.runtime._workbench import WorkbenchStateError

__all__ = ["CLEARING_MARK", "LOG_RECORD", "check_log", "check_not_half_cleared", "clear_results", "held_results",
           "log_identity", "record_log", "recorded_log"]

logger = logging.getLogger(__name__)

#: Where a home notes the log its results come from (under ``Settings.state_dir``).
LOG_RECORD = "log.json"
#: In the home while a fresh start clears it: written before the first store goes, removed after the last.
CLEARING_MARK = ".fresh-start-incomplete"


def log_identity(data: str | Path, summary: Any) -> dict[str, Any]:
    """What :func:`check_log` compares and :func:`record_log` notes of a log: path, rows, first and last
    arrival, content fingerprint."""
    from workbench.replay._source import LogFile

    try:
        fingerprint: str | None = LogFile(data).fingerprint
    except Exception as exc:  # gone or unreadable since its summary was read: told apart by path then
        logger.warning("cannot fingerprint %s: %s", data, exc)
        fingerprint = None
    return {"path": str(Path(data).expanduser().resolve()), "rows": int(summary.rows),
            "first_arrival": summary.first_arrival.isoformat(), "last_arrival": summary.last_arrival.isoformat(),
            "fingerprint": fingerprint}


def _same_log(held: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """The same path and rows, or the same content (a copy or a moved file); a record written before the
    fingerprint was kept, or a log that cannot be read now, compares paths."""
    keys = ("rows", "first_arrival", "last_arrival")
    if any(held.get(key) != wanted[key] for key in keys):
        return False
    if held.get("fingerprint") and wanted.get("fingerprint"):
        return held["fingerprint"] == wanted["fingerprint"]
    return held.get("path") == wanted["path"]


def _grown(held: dict[str, Any], data: str | Path) -> bool:
    """Whether ``data`` is the held log (a folder) with files added after its last: the results go on."""
    from workbench.replay._source import LogFile

    fingerprint, rows = held.get("fingerprint"), held.get("rows")
    if not isinstance(fingerprint, str) or not isinstance(rows, int):
        return False
    try:
        grown = LogFile(data).grew_from(fingerprint, rows)
    except Exception:  # unreadable: the refusal names the two logs
        return False
    if grown:
        logger.info("%s is %s with files added after its last: its results go on", data, held.get("path"))
    return grown


def held_results(settings: Settings) -> list[Path]:
    """The home's stores that hold results (empty for a fresh home)."""
    found = []
    for path in (settings.shards_dir, settings.sqlite_path, settings.lakehouse_dir, settings.models_dir):
        if isinstance(path, Path) and path.exists() and (path.is_file() or any(path.iterdir())):
            found.append(path)
    return found


def check_not_half_cleared(settings: Settings) -> None:
    """Raise :class:`WorkbenchStateError` when a fresh start of the home was stopped while it cleared it.

    Killed half-way, it left some stores gone and others (the broker's data with the apps' positions, the
    state) in place; a plain start then counted nothing again: 0 of 1,333 windows, for good.
    """
    mark = settings.home / CLEARING_MARK
    if not mark.exists():
        return
    try:
        began = f" (begun {mark.read_text().strip()})"
    except OSError:
        began = ""
    msg = (f"A fresh start of {settings.home} was stopped while it cleared the home's results{began}: some "
           "stores are gone and others are not, and a start on them would not count the log again. Run "
           "`workbench start --fresh` again (Workbench.start(..., fresh=True)) to finish clearing it.")
    raise WorkbenchStateError(msg)


def check_log(settings: Settings, data: str | Path, summary: Any, identity: dict[str, Any] | None = None) -> None:
    """Raise :class:`WorkbenchStateError` when the home holds results of another log than ``data``.

    ``identity``: :func:`log_identity` of ``data`` when the caller has it (it reads every part's footer).
    """
    record = settings.state_dir / LOG_RECORD
    if not record.is_file() or not held_results(settings):
        return  # a fresh home, or one whose results predate the record: nothing to compare with
    try:
        held = json.loads(record.read_text())
    except (OSError, ValueError):
        return
    wanted = identity or log_identity(data, summary)
    if _same_log(held, wanted) or _grown(held, data):
        return
    if held.get("path") == wanted["path"]:  # the same name twice read as a riddle: say the file changed
        what = (f"{settings.home} holds the results of {held['path']} as it was ({held.get('rows', 0):,} rows, "
                f"{held.get('first_arrival')} .. {held.get('last_arrival')}), and the log there has changed since "
                f"(now {wanted['rows']:,} rows, {wanted['first_arrival']} .. {wanted['last_arrival']}"
                + (", other content" if held.get("rows") == wanted["rows"] else "") + "): rewritten or grown. "
                "A log that grows is a folder: new files whose names sort after the old ones continue it "
                "(`workbench prepare --split day` writes one file per day).")
    else:
        what = (f"{settings.home} holds the results of another log: {held.get('path')} ({held.get('rows', 0):,} "
                f"rows, {held.get('first_arrival')} .. {held.get('last_arrival')}), not {wanted['path']} "
                f"({wanted['rows']:,} rows, {wanted['first_arrival']} .. {wanted['last_arrival']}).")
    msg = (f"{what} Replayed into it, "
           "the two would mix: the new rows scored by models of the old log and counted into its windows. "
           "Use another home (--home or WORKBENCH_HOME), or clear this one's results "
           "first: `workbench start --fresh` (Workbench.start(..., fresh=True)).")
    raise WorkbenchStateError(msg)


def recorded_log(settings: Settings) -> Path | None:
    """The log the home's results come from (as :func:`record_log` noted it), or None."""
    try:
        path = json.loads((settings.state_dir / LOG_RECORD).read_text()).get("path")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(path) if isinstance(path, str) and path else None


def record_log(settings: Settings, data: str | Path, summary: Any, identity: dict[str, Any] | None = None) -> None:
    """Note ``data`` as the log the home's results come from (``identity`` as in :func:`check_log`)."""
    from workbench._fs import write_atomic

    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # mkstemp's 0600: owner-only under any umask of the caller (the Python API sets none)
    record = identity or log_identity(data, summary)
    write_atomic(settings.state_dir / LOG_RECORD, json.dumps(record, indent=1).encode())


def clear_results(settings: Settings) -> list[Path]:
    """Delete what the home holds from earlier runs (shards, window stats, lakehouse, models, state,
    archive, the local broker's data), keeping its inputs, logs, reports and broker configuration.

    Only for a home that keeps everything itself: a store that lives elsewhere (shared by other homes
    or machines) is refused, naming its setting. The caller makes sure no workbench of the home runs.
    """
    elsewhere = {
        "KAFKA_BOOTSTRAP_SERVERS (an external cluster keeps its topics and offsets)": not settings.manages_kafka,
        "WORKBENCH_SHARDS_DIR": settings.shards_dir_override is not None,
        "WORKBENCH_MODELS_DIR": settings.models_dir_override is not None,
        "WORKBENCH_ARCHIVE_DIR": settings.archive_dir_override is not None,
        "WORKBENCH_WINDOW_STATS_URL": settings.window_stats_url is not None,
        "WORKBENCH_LAKEHOUSE_CATALOG": settings.lakehouse_catalog != "sqlite",
        "WORKBENCH_LAKEHOUSE_DATA": settings.lakehouse_data is not None,
    }
    shared = [name for name, set_ in elsewhere.items() if set_]
    if shared:
        msg = (f"A fresh start clears only what lies in the home, and {', '.join(shared)} "
               f"{'points' if len(shared) == 1 else 'point'} elsewhere: clear those stores yourself, or use another "
               "home (--home or WORKBENCH_HOME).")
        raise WorkbenchStateError(msg)
    from workbench.broker import LocalKafka

    broker = LocalKafka(settings)
    if broker.pid() is not None:
        broker.stop()  # its data goes below; the start brings it up again, empty
    home = settings.home
    mark = home / CLEARING_MARK
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:  # owner-only, any umask
        fh.write(datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") + "\n")
    targets = [settings.shards_dir, settings.sqlite_path, *home.glob(f"{settings.sqlite_path.name}-*"),
               settings.lakehouse_dir, settings.models_dir, settings.state_dir, settings.archive_dir,
               settings.kafka_dir / "data"]
    cleared = []
    for path in targets:
        if not isinstance(path, Path) or not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        cleared.append(path)
    mark.unlink()
    logger.info("fresh start: cleared %s", ", ".join(str(p) for p in cleared) or "nothing")
    return cleared
