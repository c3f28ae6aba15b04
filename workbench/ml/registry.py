"""Model registry: immutable version folders plus an atomically swapped ``CURRENT`` pointer.

Layout under ``models_dir``::

    versions/v0003-2024-03-05/   mean.onnx, quantile.onnx, fingerprint_stats.parquet,
                                 instance_stats.parquet, model.json, evaluations.json (optional)
    CURRENT                      one line: the current version id
    SEQUENCE                     the highest version sequence number ever published (never reused)
    PINNED                       present while a person pinned a version (set-current/rollback)
    history.jsonl                append-only: every move of CURRENT (time, actor, from, to, pinned)
    .lock                        flock-ed by every writer of CURRENT/PINNED and by prune
    .trainer.lock                flock-ed for life by the one elected trainer (:class:`TrainerLease`)

Version ids are ``v{sequence:04d}-{training day}``: unique, sortable, and they say which day
they were trained for. A version is built in ``versions/.tmp-*`` and renamed into place only
once every file (and ``model.json`` with their SHA-256) is written, so a crash never leaves a
half-written version (every file and both directories are fsync-ed around the rename).
``CURRENT`` is replaced with temp file + ``os.replace``.

Invariants (see :mod:`workbench.ml.selection` for the rule that picks versions):

* a training moves ``CURRENT`` only forward in training-window order (:meth:`advance_current`):
  a retried older day never becomes current after newer ones; a pin is never moved by training;
* a person moves it anywhere (:meth:`set_current` / ``rollback``; pins it), recorded in
  ``history.jsonl``; ``set_current("auto")`` removes the pin;
* prune, set_current and advance_current serialise on ``.lock`` (``fcntl.flock``), so prune can
  never delete the version a concurrent rollback points at;
* an unreadable ``model.json`` is logged and skipped by :meth:`windows` (the previous version
  keeps scoring).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workbench._fs import FlockLease, write_atomic
from workbench.exceptions import ConfigurationError
from workbench.ml.exceptions import ModelNotFoundError, RegistryError
from workbench.ml.selection import VersionWindow

__all__ = ["TRAINER_LOCK", "ModelRegistry", "TrainerLease", "sha256_file"]

logger = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"^v(\d{4,})-(\d{4}-\d{2}-\d{2})$")
MODEL_JSON = "model.json"
EVALUATIONS_JSON = "evaluations.json"
HISTORY_FILE = "history.jsonl"
AUTO = "auto"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelRegistry:
    """Versions and the current pointer under ``models_dir``.

    Parameters
    ----------
    models_dir : Path
        ``settings.models_dir``.
    """

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        #: versions whose ``model.json`` the last :meth:`windows` could not read
        self.unreadable: set[str] = set()
        self._reported: set[tuple[str, int]] = set()  # (version, model.json mtime) logged as unreadable

    @property
    def versions_dir(self) -> Path:
        """Folder holding one sub-folder per version."""
        return self.models_dir / "versions"

    @property
    def current_path(self) -> Path:
        """The ``CURRENT`` pointer file."""
        return self.models_dir / "CURRENT"

    @property
    def pinned_path(self) -> Path:
        """The ``PINNED`` file (present while a person pinned a version)."""
        return self.models_dir / "PINNED"

    @property
    def history_path(self) -> Path:
        """Append-only record of every move of ``CURRENT``."""
        return self.models_dir / HISTORY_FILE

    def check_writable(self) -> None:
        """Create the registry folder and write a file there, or raise :class:`ConfigurationError`.

        A training calls it first: on a read-only or foreign home it would otherwise fit for
        seconds to minutes before its first write fails.
        """
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.models_dir):
                pass
        except OSError as exc:
            msg = (f"The model registry {self.models_dir} cannot be created or written ({exc.strerror}): "
                   "WORKBENCH_MODELS_DIR (default: models under WORKBENCH_HOME) says where models go.")
            raise ConfigurationError(msg) from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive registry lock (``fcntl.flock`` on ``.lock``; other processes and threads wait)."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.models_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # --- reading ------------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """All complete version ids, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        ids = [p.name for p in self.versions_dir.iterdir()
               if _VERSION_RE.match(p.name) and (p / MODEL_JSON).is_file()]
        return sorted(ids, key=lambda v: int(_VERSION_RE.match(v).group(1)))  # type: ignore[union-attr]

    def path(self, version: str) -> Path:
        """Folder of an existing version (raises :class:`ModelNotFoundError`).

        Only a version id (``v0003-2024-03-05``) names one: a path to the same folder
        (``../models/versions/v0003-...``, ``v0003-.../.``, or one into another home) was accepted by
        ``set-current`` and became the id the stream stamped on every row and anomaly it scored.
        """
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            msg = (f"{version!r} is not a model version id: ids read like v0003-2024-03-05 (sequence, training "
                   f"day; `workbench models list`). {self._known_versions()}")
            raise ModelNotFoundError(msg)
        folder = self.versions_dir / version
        if not (folder / MODEL_JSON).is_file():
            msg = f"Model version {version!r} does not exist in {self.versions_dir}. {self._known_versions()}"
            raise ModelNotFoundError(msg)
        return folder

    def _known_versions(self) -> str:
        known = self.versions()
        return f"Known versions: {', '.join(known[-5:]) if known else 'none (train one first)'}."

    def info(self, version: str) -> dict[str, Any]:
        """``model.json`` of a version, plus its ``evaluations`` (if any); :class:`RegistryError` naming
        the file when one cannot be read."""
        folder = self.path(version)
        meta = _read_json(folder / MODEL_JSON, version)
        if not isinstance(meta, dict):
            msg = f"{folder / MODEL_JSON} of model version {version} is not a JSON object: the version is damaged."
            raise RegistryError(msg)
        evals = folder / EVALUATIONS_JSON
        meta["evaluations"] = _read_json(evals, version) if evals.is_file() else []
        return meta

    def current(self) -> str | None:
        """The current version id, or ``None`` when no model was registered yet."""
        try:
            text = self.current_path.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def pinned(self) -> str | None:
        """The version a person pinned (``None``: event-time selection applies)."""
        try:
            text = self.pinned_path.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

    def windows(self) -> list[VersionWindow]:
        """Every readable version with its training window, in window order.

        A version whose ``model.json`` cannot be read (truncated, not JSON) is skipped with a
        logged error, so the version before it keeps scoring.
        """
        out = []
        unreadable = set()
        for version in self.versions():
            path = self.versions_dir / version / MODEL_JSON
            try:
                meta = json.loads(path.read_text())
                out.append(VersionWindow.from_meta(version, meta))
            except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
                unreadable.add(version)
                try:
                    key = (version, path.stat().st_mtime_ns)
                except OSError:
                    key = (version, 0)
                if key not in self._reported:  # once per state of the file, not at every look
                    self._reported.add(key)
                    logger.error("skipping unreadable model version version=%s file=%s error=%s", version, path, exc)
        self.unreadable = unreadable
        return sorted(out)

    def history(self) -> list[dict[str, Any]]:
        """Every recorded move of ``CURRENT``, oldest first (a torn last line is ignored)."""
        try:
            lines = self.history_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def resolve(self, version: str | None) -> str:
        """``None``/``"current"`` -> the current id; anything else is checked to exist."""
        if version in (None, "current"):
            current = self.current()
            if current is None:
                msg = f"No current model in {self.models_dir}: train one first (workbench train --day D)."
                raise ModelNotFoundError(msg)
            return current
        self.path(version)
        return version

    def verify(self, version: str) -> None:
        """Check every file's SHA-256 against ``model.json`` (raises :class:`RegistryError`)."""
        folder = self.path(version)
        meta = _read_json(folder / MODEL_JSON, version)
        files = meta.get("files") if isinstance(meta, dict) else None
        if not isinstance(files, dict):
            msg = f"{folder / MODEL_JSON} of model version {version} lists no files: the version is damaged."
            raise RegistryError(msg)
        for name, digest in files.items():
            try:
                actual = sha256_file(folder / name)
            except OSError as exc:
                msg = f"File {folder / name} of model version {version} cannot be read ({exc.strerror or exc})."
                raise RegistryError(msg) from None
            if actual != digest:
                msg = (f"File {name} of model version {version} is corrupt: SHA-256 {actual[:12]}... "
                       f"does not match {digest[:12]}... in model.json. Roll back to another version.")
                raise RegistryError(msg)

    # --- writing ------------------------------------------------------------------------------
    def next_version_id(self, day: dt.date) -> str:
        """The next sequence number with ``day`` as suffix.

        Never one a deleted version had (by a person or ``prune``): the shards and the lakehouse keep
        the ids of the versions that scored them, and a tester's next training was published as
        ``v0001-2024-03-05`` after ``v0001-2024-03-04`` was deleted. The highest sequence ever published
        is kept in ``SEQUENCE``; ``history.jsonl`` covers registries from before that file.
        """
        names = [p.name for p in (self.versions_dir.iterdir() if self.versions_dir.is_dir() else [])]
        names += [v for record in self.history() for v in (record.get("from"), record.get("to")) if isinstance(v, str)]
        seqs = [int(m.group(1)) for m in map(_VERSION_RE.match, names) if m]
        return f"v{max([*seqs, self._recorded_sequence()]) + 1:04d}-{day.isoformat()}"

    @property
    def sequence_path(self) -> Path:
        """The highest version sequence number ever published (``SEQUENCE``)."""
        return self.models_dir / "SEQUENCE"

    def _recorded_sequence(self) -> int:
        """The sequence number in ``SEQUENCE`` (0 when there is none yet)."""
        try:
            return int(self.sequence_path.read_text().strip())
        except (OSError, ValueError):
            return 0

    def _note_sequence(self, version: str) -> None:
        match = _VERSION_RE.match(version)
        if match is None:
            return
        with self.locked():
            if int(match.group(1)) > self._recorded_sequence():
                write_atomic(self.sequence_path, f"{int(match.group(1))}\n".encode())

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A temporary folder inside ``versions/`` (removed unless :meth:`publish` moved it)."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_staging()
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.versions_dir))
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _remove_stale_staging(self, max_age_s: float = 6 * 3600) -> None:
        """Delete staging folders a killed trainer left behind (older than ``max_age_s``)."""
        now = time.time()
        for p in self.versions_dir.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > max_age_s:
                    shutil.rmtree(p, ignore_errors=True)
                    logger.info("removed stale staging folder path=%s", p)

    def publish(self, staged: Path, day: dt.date, meta: dict[str, Any]) -> str:
        """Hash the staged files, write ``model.json`` and rename the folder into place.

        Returns the new version id. ``meta`` gets ``version``, ``training_day``, ``files`` and
        ``created_at`` filled in. Every file is fsync-ed before the rename and both folders
        after it, so a crash leaves either no version or a complete one. When ``meta`` has a
        ``recipe_sha256`` (inputs + parameters) and a version of the same day has the same one,
        that version is returned and nothing new is registered (a retried training is idempotent).
        """
        recipe = meta.get("recipe_sha256")
        if recipe:
            for window in self.windows():
                if window.end == day and self._recipe(window.version) == recipe:
                    logger.info("model version already registered version=%s recipe=%s", window.version,
                                recipe[:12])
                    return window.version
        files = {p.name: sha256_file(p) for p in sorted(staged.iterdir()) if p.is_file()}
        for name in files:
            _fsync_file(staged / name)
        for _ in range(100):
            version = self.next_version_id(day)
            meta = {**meta, "version": version, "training_day": day.isoformat(), "files": files,
                    "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            with (staged / MODEL_JSON).open("w") as fh:
                fh.write(json.dumps(meta, indent=2, sort_keys=True))
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(staged)
            try:
                os.rename(staged, self.versions_dir / version)
            except OSError:
                if (self.versions_dir / version).exists():
                    continue  # a concurrent publisher took this id
                raise
            _fsync_dir(self.versions_dir)
            self._note_sequence(version)
            logger.info("model version published version=%s", version)
            return version
        msg = f"Could not allocate a version id in {self.versions_dir} after 100 attempts."
        raise RegistryError(msg)

    def _recipe(self, version: str) -> str | None:
        try:
            return json.loads((self.versions_dir / version / MODEL_JSON).read_text()).get("recipe_sha256")
        except (OSError, ValueError):
            return None

    def _record(self, actor: str, previous: str | None, version: str | None, *, pinned: bool,
                reason: str = "") -> None:
        record = {"at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), "actor": actor,
                  "from": previous, "to": version, "pinned": pinned, "reason": reason}
        fd = os.open(self.history_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def set_current(self, version: str, *, actor: str | None = None, reason: str = "") -> str:
        """A person's choice: point ``CURRENT`` at ``version`` and pin it (also how rollback works).

        ``version="auto"`` removes the pin and points ``CURRENT`` at the newest version in
        window order (event-time selection applies again). Recorded in ``history.jsonl`` with
        the time, ``actor`` (default: the login name), from and to. Returns the new current id.
        """
        actor = actor or _login()
        with self.locked():
            previous = self.current()
            if version == AUTO:
                windows = self.windows()
                if not windows:
                    # the pin goes all the same: each day's version scores it once one exists (the pin stayed,
                    # naming a version that may be gone, and kept every later version from scoring)
                    unpinned = self.pinned() is not None
                    with contextlib.suppress(FileNotFoundError):
                        self.pinned_path.unlink()
                    if unpinned:
                        self._record(actor, previous, previous, pinned=False, reason=reason or "auto")
                    msg = (f"No readable model version in {self.versions_dir}: nothing to select"
                           f"{'; the pin is removed' if unpinned else ''}.")
                    raise ModelNotFoundError(msg)
                target = windows[-1].version
                write_atomic(self.current_path, (target + "\n").encode())
                with contextlib.suppress(FileNotFoundError):
                    self.pinned_path.unlink()
                self._record(actor, previous, target, pinned=False, reason=reason or "auto")
                logger.info("current model unpinned version=%s actor=%s", target, actor)
                return target
            self.verify(version)  # never point at a corrupt version
            write_atomic(self.current_path, (version + "\n").encode())
            write_atomic(self.pinned_path, (version + "\n").encode())
            self._record(actor, previous, version, pinned=True, reason=reason)
        logger.info("current model set version=%s previous=%s actor=%s (pinned)", version, previous, actor)
        return version

    rollback = set_current

    def advance_current(self, version: str, *, actor: str = "training") -> bool:
        """A training's move: make ``version`` current only if it is newer in window order.

        Never moves a pin, and never moves ``CURRENT`` back to an older training window (a
        retried failed day that finishes after newer days). Returns whether ``CURRENT`` moved.
        """
        with self.locked():
            previous = self.current()
            windows = {w.version: w for w in self.windows()}
            if version not in windows:
                msg = f"Model version {version!r} is not a readable version of {self.versions_dir}."
                raise ModelNotFoundError(msg)
            if self.pinned() is not None:
                logger.info("current model pinned: not advanced version=%s current=%s", version, previous)
                return False
            if previous == version:  # a retrain of the same window (blind evaluation, 41st session: "not moved
                # back" read as a rollback refused)
                logger.info("current model unchanged: %s is already the current version", version)
                return False
            if previous in windows and windows[previous] >= windows[version]:
                logger.info("current model kept: %s covers a window no older than %s's", previous, version)
                return False
            write_atomic(self.current_path, (version + "\n").encode())
            self._record(actor, previous, version, pinned=False)
        logger.info("current model advanced version=%s previous=%s", version, previous)
        return True

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions (the current one is always kept).

        A version is renamed out of ``versions/`` before its files go, so no reader ever sees a
        half-deleted version as complete. Shards keep the ids of the versions that scored them.
        Returns the deleted ids, oldest first.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            msg = f"keep must be an integer >= 1 (how many of the newest versions stay). Got {keep!r} instead."
            raise RegistryError(msg)
        with self.locked():
            return self._prune(keep)

    def _prune(self, keep: int) -> list[str]:
        for leftover in self.versions_dir.glob(".deleting-*"):  # a prune killed mid-delete
            shutil.rmtree(leftover, ignore_errors=True)
        versions = self.versions()
        current, pinned = self.current(), self.pinned()
        kept = set(versions[-keep:]) | {v for v in (current, pinned) if v}
        removed = []
        for version in versions:
            if version in kept:
                continue
            doomed = self.versions_dir / f".deleting-{version}"
            os.rename(self.versions_dir / version, doomed)
            shutil.rmtree(doomed)
            removed.append(version)
            logger.info("model version deleted version=%s", version)
        if removed:
            _fsync_dir(self.versions_dir)
        return removed

    def add_evaluation(self, version: str, record: dict[str, Any]) -> None:
        """Append an evaluation record to the version's ``evaluations.json`` (atomic rewrite)."""
        folder = self.path(version)
        path = folder / EVALUATIONS_JSON
        records = json.loads(path.read_text()) if path.is_file() else []
        records.append(record)
        write_atomic(path, json.dumps(records, indent=2, sort_keys=True).encode())


def _read_json(path: Path, version: str) -> Any:
    """A registry file's JSON, or :class:`RegistryError` naming the file (a bare JSONDecodeError did not)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        msg = (f"{path} of model version {version} cannot be read ({exc}): the version is damaged; "
               "`workbench models set-current` another version, or train it again.")
        raise RegistryError(msg) from None


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


TRAINER_LOCK = ".trainer.lock"


class TrainerLease(FlockLease):
    """Election of the one trainer among the scoring instances that share a models folder.

    N scoring processes of one home all score with the registry's versions, but only one may
    schedule and run trainings (and compact settled shard days). The lease is an exclusive,
    non-blocking ``fcntl.flock`` on ``<models_dir>/.trainer.lock``, held for the life of the
    process: the kernel drops it when the holder dies (``kill -9`` included), and the next
    instance that calls :meth:`try_acquire` becomes the trainer. The holder's pid is written into
    the file for ``workbench status``. Local filesystems only (``flock`` is not shared over NFS).
    """

    def __init__(self, models_dir: Path) -> None:
        super().__init__(Path(models_dir) / TRAINER_LOCK)

    def _acquired(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        logger.info("elected trainer pid=%d lock=%s", os.getpid(), self.path)

    @staticmethod
    def holder(models_dir: Path) -> int | None:
        """Pid of the current trainer, or None when no process holds the lease."""
        path = Path(models_dir) / TRAINER_LOCK
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 32, 0).decode(errors="replace").strip()
                return int(text) if text.isdigit() else None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
