"""The Arrow allocator of the workbench's own processes (the `workbench` command)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# What `workbench ...` does first, then what every command module does: import pyarrow.
_PROBE = ("from workbench.cli import prefer_jemalloc_for_arrow; prefer_jemalloc_for_arrow(); "
          "import pyarrow as pa; print(pa.default_memory_pool().backend_name)")


def _backend(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done = subprocess.run([sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pyarrow has jemalloc built in on Linux only")
def test_jemalloc_by_default_and_the_users_choice_wins() -> None:
    assert _backend() == "jemalloc"
    assert _backend(ARROW_DEFAULT_MEMORY_POOL="system") == "system"
