"""The trainer election through the broker (issue 16, item 6): one trainer across machines, fenced.

Two participants (subprocesses, each a :class:`BrokerLease` on the session's real Kafka) perform a
fenced operation while they hold the role. The first keeps the role when the second joins; when it
is frozen (SIGSTOP) the second takes over, and once thawed the first performs nothing while the
second holds the role; when the second is killed (SIGKILL) the first takes over again. At no
moment are both leaders: the validity windows ``[confirmed_at, confirmed_at + fence_s)`` that
the operations of different processes ran under never overlap.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from workbench.config import Settings

REPO = Path(__file__).resolve().parents[1]


def _ops(path: Path) -> list[tuple[int, float, float, float]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        pid, confirmed, now, fence = line.split()
        rows.append((int(pid), float(confirmed), float(now), float(fence)))
    return rows


def _wait_for_op(path: Path, pid: int, after: float, timeout: float) -> float:
    """Monotonic time of ``pid``'s first operation later than ``after`` (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        times = [now for p, _, now, _ in _ops(path) if p == pid and now > after]
        if times:
            return min(times)
        time.sleep(0.1)
    pytest.fail(f"process {pid} never became the trainer within {timeout:.0f} s; ops: {_ops(path)[-5:]}")


def _wait_for_log(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{path.name} never logged {text!r}"
        time.sleep(0.2)


def _start(settings: Settings, group: str, out: Path, log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "tests.election_participant", str(settings.home), settings.bootstrap_servers,
            settings.topic_query_events, group, str(out)]
    with log.open("ab") as fh:
        return subprocess.Popen(args, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)


def test_one_trainer_through_the_broker_fenced_across_freeze_and_kill(kafka_settings: Settings,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "ops.txt"
    group = f"workbench-scoring-{uuid.uuid4().hex[:8]}"
    first = _start(kafka_settings, group, out, tmp_path / "first.log")
    procs = [first]
    try:
        _wait_for_op(out, first.pid, 0.0, 180)  # a cold start on a loaded machine: imports, topic, join
        second = _start(kafka_settings, group, out, tmp_path / "second.log")
        procs.append(second)
        _wait_for_log(tmp_path / "second.log", "member of group", 180)  # the second joined the group ...
        time.sleep(2.0)
        assert not [op for op in _ops(out) if op[0] == second.pid], "a joining process took the role"
        joined = time.monotonic()
        # ... and the first keeps it (a rebalance can hold its confirmations a few seconds on a loaded machine)
        assert _wait_for_op(out, first.pid, joined - 0.5, 30)
        assert not [op for op in _ops(out) if op[0] == second.pid], "a joining process took the role"

        os.kill(first.pid, signal.SIGSTOP)  # frozen: it still thinks it owns partition 0
        frozen = time.monotonic()
        took_over = _wait_for_op(out, second.pid, frozen, 60)
        os.kill(first.pid, signal.SIGCONT)
        time.sleep(2.0)
        late = [op for op in _ops(out) if op[0] == first.pid and op[2] > frozen]
        assert not late, f"the thawed process acted as trainer while the other held the role: {late[:3]}"
        assert _wait_for_op(out, second.pid, time.monotonic() - 0.5, 30)  # the thawed one's rejoin: a rebalance

        second.send_signal(signal.SIGKILL)
        second.wait(10)
        killed = time.monotonic()
        back = _wait_for_op(out, first.pid, killed, 60)
        assert back - killed < 30  # the session timeout (6 s) plus a rebalance (slower on a loaded machine)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    ops = _ops(out)
    for _pid, confirmed, now, fence in ops:
        assert confirmed <= now < confirmed + fence
    windows: dict[tuple[int, float], float] = {}
    for pid, confirmed, _now, fence in ops:
        windows[(pid, confirmed)] = confirmed + fence
    spans = sorted((start, end, pid) for (pid, start), end in windows.items())
    last_end: dict[int, float] = {}
    for start, end, pid in spans:
        for other, other_end in last_end.items():
            assert other == pid or other_end <= start, (
                f"two trainers at once: {other} until {other_end:.3f}, {pid} from {start:.3f}")
        last_end[pid] = max(end, last_end.get(pid, end))
    assert took_over > frozen


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "lock"),
    ({"WORKBENCH_MODELS_DIR": "/mnt/shared/models"}, "broker"),
    ({"WORKBENCH_SHARDS_DIR": "/mnt/shared/shards"}, "broker"),
    ({"WORKBENCH_MODELS_DIR": "/mnt/shared/models", "WORKBENCH_TRAINER_ELECTION": "lock"}, "lock"),
    ({"WORKBENCH_TRAINER_ELECTION": "broker"}, "broker"),
])
def test_election_mode_follows_the_configuration(env: dict[str, str], expected: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORKBENCH_MODELS_DIR", "WORKBENCH_SHARDS_DIR", "WORKBENCH_TRAINER_ELECTION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings(home=tmp_path).trainer_election_mode == expected
