"""App start-up: ``workbench app NAME`` parses its command without importing every other command's module."""

from __future__ import annotations

import subprocess
import sys

from workbench.cli import _command, build_parser

_PROBE = """
import sys
from workbench.cli import _command, build_parser
argv = ["--home", "/nonexistent", "app", "anomaly-sink", "--timeout", "1"]
args = build_parser(_command(argv)).parse_args(argv)
print(args.command, args.name, args.timeout, *(m in sys.modules for m in ("workbench.replay", "pandas")))
"""


def test_an_app_command_imports_only_its_own_module() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["app", "anomaly-sink", "1.0", "False", "False"]


def test_other_commands_and_help_get_the_full_parser() -> None:
    assert _command(["--home", "app", "-v", "status"]) == "status"  # "app" here is the --home value
    assert _command(["--bootstrap-servers", "h:9092"]) is None
    full = build_parser()
    assert build_parser(_command(["replay", "--help"])).format_help() == full.format_help()
    assert {"app", "replay", "status", "generate"} <= set(full._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
