"""Model registry: immutable version folders plus an atomically swapped ``CURRENT`` pointer.

Layout under ``models_dir``::

    versions/v0003-2024-03-05/   mean.onnx, quantile.onnx, fingerprint_stats.parquet,
                                 instance_stats.parquet, model.json, evaluations.json (optional)
    CURRENT                      one line: the current version id

Version ids are ``v{sequence:04d}-{training day}``: unique, sortable, and they say which day
they were trained for. A version is built in ``versions/.tmp-*`` and renamed into place only
once every file (and ``model.json`` with their SHA-256) is written, so a crash never leaves a
half-written version. ``CURRENT`` is replaced with temp file + ``os.replace``; rollback is
:meth:`ModelRegistry.set_current` with an older id.
"""

from __future__ import annotations

import contextlib
import datetime as dt
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

from workbench._fs import write_atomic
from workbench.ml.exceptions import ModelNotFoundError, RegistryError

__all__ = ["ModelRegistry", "sha256_file"]

logger = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"^v(\d{4,})-(\d{4}-\d{2}-\d{2})$")
MODEL_JSON = "model.json"
EVALUATIONS_JSON = "evaluations.json"


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

    @property
    def versions_dir(self) -> Path:
        """Folder holding one sub-folder per version."""
        return self.models_dir / "versions"

    @property
    def current_path(self) -> Path:
        """The ``CURRENT`` pointer file."""
        return self.models_dir / "CURRENT"

    # --- reading ------------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """All complete version ids, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        ids = [p.name for p in self.versions_dir.iterdir()
               if _VERSION_RE.match(p.name) and (p / MODEL_JSON).is_file()]
        return sorted(ids, key=lambda v: int(_VERSION_RE.match(v).group(1)))  # type: ignore[union-attr]

    def path(self, version: str) -> Path:
        """Folder of an existing version (raises :class:`ModelNotFoundError`)."""
        folder = self.versions_dir / version
        if not (folder / MODEL_JSON).is_file():
            known = self.versions()
            msg = (f"Model version {version!r} does not exist in {self.versions_dir}. "
                   f"Known versions: {', '.join(known[-5:]) if known else 'none (train one first)'}.")
            raise ModelNotFoundError(msg)
        return folder

    def info(self, version: str) -> dict[str, Any]:
        """``model.json`` of a version, plus its ``evaluations`` (if any)."""
        folder = self.path(version)
        meta = json.loads((folder / MODEL_JSON).read_text())
        evals = folder / EVALUATIONS_JSON
        meta["evaluations"] = json.loads(evals.read_text()) if evals.is_file() else []
        return meta

    def current(self) -> str | None:
        """The current version id, or ``None`` when no model was registered yet."""
        try:
            text = self.current_path.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

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
        meta = json.loads((folder / MODEL_JSON).read_text())
        for name, digest in meta.get("files", {}).items():
            actual = sha256_file(folder / name)
            if actual != digest:
                msg = (f"File {name} of model version {version} is corrupt: SHA-256 {actual[:12]}... "
                       f"does not match {digest[:12]}... in model.json. Roll back to another version.")
                raise RegistryError(msg)

    # --- writing ------------------------------------------------------------------------------
    def next_version_id(self, day: dt.date) -> str:
        """The next sequence number with ``day`` as suffix."""
        seqs = [int(_VERSION_RE.match(p.name).group(1))  # type: ignore[union-attr]
                for p in (self.versions_dir.iterdir() if self.versions_dir.is_dir() else [])
                if _VERSION_RE.match(p.name)]
        return f"v{max(seqs, default=0) + 1:04d}-{day.isoformat()}"

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
        ``created_at`` filled in.
        """
        files = {p.name: sha256_file(p) for p in sorted(staged.iterdir()) if p.is_file()}
        for _ in range(100):
            version = self.next_version_id(day)
            meta = {**meta, "version": version, "training_day": day.isoformat(), "files": files,
                    "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            (staged / MODEL_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True))
            try:
                os.rename(staged, self.versions_dir / version)
            except OSError:
                if (self.versions_dir / version).exists():
                    continue  # a concurrent publisher took this id
                raise
            logger.info("model version published version=%s", version)
            return version
        msg = f"Could not allocate a version id in {self.versions_dir} after 100 attempts."
        raise RegistryError(msg)

    def set_current(self, version: str) -> None:
        """Atomically point ``CURRENT`` at an existing version (also how rollback works)."""
        self.path(version)
        write_atomic(self.current_path, (version + "\n").encode())
        logger.info("current model set version=%s", version)

    rollback = set_current

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions (the current one is always kept).

        A version is renamed out of ``versions/`` before its files go, so no reader ever sees a
        half-deleted version as complete. Shards keep the ids of the versions that scored them.
        Returns the deleted ids, oldest first.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            msg = f"keep must be an integer >= 1 (how many of the newest versions stay). Got {keep!r} instead."
            raise RegistryError(msg)
        for leftover in self.versions_dir.glob(".deleting-*"):  # a prune killed mid-delete
            shutil.rmtree(leftover, ignore_errors=True)
        versions = self.versions()
        current = self.current()
        kept = set(versions[-keep:]) | ({current} if current else set())
        removed = []
        for version in versions:
            if version in kept:
                continue
            doomed = self.versions_dir / f".deleting-{version}"
            os.rename(self.versions_dir / version, doomed)
            shutil.rmtree(doomed)
            removed.append(version)
            logger.info("model version deleted version=%s", version)
        return removed

    def add_evaluation(self, version: str, record: dict[str, Any]) -> None:
        """Append an evaluation record to the version's ``evaluations.json`` (atomic rewrite)."""
        folder = self.path(version)
        path = folder / EVALUATIONS_JSON
        records = json.loads(path.read_text()) if path.is_file() else []
        records.append(record)
        write_atomic(path, json.dumps(records, indent=2, sort_keys=True).encode())
