"""App start-up: ``workbench app NAME`` parses its command without importing every other command's module, and an
app process imports Quix and its own module without what its first commit does not need."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

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


_HELP_PROBE = """
import sys
from workbench.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sys.stdin.read().split()
print("exit", code, *sorted(name for name in sys.modules if name.split(".")[0] in heavy))
"""

#: Modules the command's help and simple commands must not import: each costs 0.05-1 s of start-up.
_HEAVY = ("pyarrow", "pandas", "numpy", "quixstreams", "duckdb", "sklearn", "onnxruntime", "scipy", "psycopg",
          "confluent_kafka", "papermill")


@pytest.mark.parametrize(("argv", "heavy"), [
    (["--help"], (*_HEAVY, "pydantic", "pydantic_settings")),
    (["replay-control", "--help"], (*_HEAVY, "pydantic", "pydantic_settings")),
    (["models", "list"], _HEAVY),  # reads settings (pydantic) and the registry folder, nothing else
])
def test_help_and_simple_commands_import_no_heavy_module(argv: list[str], heavy: tuple[str, ...],
                                                         tmp_path: Path) -> None:
    """``workbench --help`` took 3-4 s: every command module imported pyarrow, pandas, Kafka and pydantic."""
    out = subprocess.run([sys.executable, "-c", _HELP_PROBE, "--home", str(tmp_path / "home"), *argv],
                         input=" ".join(heavy), capture_output=True, text=True, check=True, timeout=120)
    last = out.stdout.strip().splitlines()[-1].split()
    assert last[:2] == ["exit", "0"], out.stdout + out.stderr
    assert last[2:] == [], f"`workbench {' '.join(argv)}` imported {last[2:]}"
    assert out.stdout.lower().startswith("no model versions" if argv[0] == "models" else "usage: workbench"), out.stdout


def test_other_commands_and_help_get_the_full_parser() -> None:
    assert _command(["--home", "app", "-v", "status"]) == "status"  # "app" here is the --home value
    assert _command(["--bootstrap-servers", "h:9092"]) is None
    full = build_parser()
    assert build_parser(_command(["replay", "--help"])).format_help() == full.format_help()
    assert {"app", "replay", "status", "generate"} <= set(full._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def test_every_option_with_a_default_names_it_in_its_help() -> None:
    """``workbench train --help`` named none of its three defaults (a blind evaluator read them in the log)."""
    def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += [a for sub in action.choices.values() for a in options(sub)]
            elif action.option_strings and not isinstance(action.default, bool) and action.default is not None \
                    and action.default is not argparse.SUPPRESS:
                found.append(action)
        return found

    every = options(build_parser())
    assert len(every) > 20
    assert [a.option_strings for a in every if "default" not in (a.help or "")] == []
    train = build_parser("train")._subparsers._group_actions[0].choices["train"].format_help()  # type: ignore[union-attr]
    assert "(default 7)" in train and "(default 400,000;" in train and "(default 0)" in train


_DEFERRAL_PROBE = """
import sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from workbench.pipeline._imports import DEFERRED_NAMES, skip_unused_imports
marked = skip_unused_imports()
assert marked == ["rfc3987_syntax", *DEFERRED_NAMES], marked
assert not [m for m in DEFERRED_NAMES if m in sys.modules], "quixstreams imported a deferred module"
import quixstreams.models.serializers.json as quix_json
from quixstreams.dataframe.joins.lookups.quix_configuration_service import lookup
from quixstreams.models.serializers import JSONSerializer, SerializationContext
from quixstreams.models.serializers.schema_registry import SchemaRegistryClientConfig
assert quix_json.SchemaRegistryError.__module__ == "workbench.pipeline._imports"  # still a stand-in

class Failing(BaseHTTPRequestHandler):  # a schema registry that answers every request with an error
    def do_GET(self):
        self.send_response(500); self.send_header("Content-Type", "application/json"); self.end_headers()
        self.wfile.write(b'{"error_code": 50001, "message": "registry down"}')
    do_POST = do_GET
    def log_message(self, *args): pass

server = HTTPServer(("127.0.0.1", 0), Failing)
threading.Thread(target=server.serve_forever, daemon=True).start()
config = SchemaRegistryClientConfig(url=f"http://127.0.0.1:{server.server_port}")
serializer = JSONSerializer(schema={"type": "object"}, schema_registry_client_config=config)  # the first use
import confluent_kafka.schema_registry as registry, httpx
assert quix_json.SchemaRegistryError is registry.SchemaRegistryError and lookup.httpx is httpx
try:
    serializer({"a": 1}, SerializationContext(topic="t", field="value"))
except Exception as exc:  # Quix turns the registry's error into its own: its except clause saw the real class
    print(type(exc).__module__, type(exc).__name__, type(exc.__cause__).__name__)
"""


def test_quix_imports_without_the_schema_registry_client_and_a_first_use_binds_the_real_one() -> None:
    # Fails when a Quix upgrade imports other names from the deferred modules (the stand-ins would
    # then import them at once): update DEFERRED_NAMES in workbench/pipeline/_imports.py.
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _DEFERRAL_PROBE], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["quixstreams.models.serializers.exceptions", "SerializationError",
                                  "SchemaRegistryError"]


#: Modules an app loads only when its work needs them (a model, a PostgreSQL store, a schema registry...).
_NOT_AT_START = ("confluent_kafka.schema_registry", "httpx", "onnxruntime", "sklearn", "altair", "scipy", "psycopg")
_APP_MODULES = {"scoring": "workbench.pipeline.scoring", "analytics": "workbench.pipeline.analytics",
                "anomaly-sink": "workbench.pipeline.anomaly_sink"}


@pytest.mark.parametrize("app", sorted(_APP_MODULES))
def test_an_app_process_imports_its_module_without_the_heavy_modules_it_loads_on_demand(app: str) -> None:
    heavy = [*_NOT_AT_START, *(("duckdb",) if app != "anomaly-sink" else ())]  # only the sink writes the lakehouse
    code = ("import sys, importlib\n"
            "from workbench.pipeline._imports import skip_unused_imports\n"
            "skip_unused_imports()\n"
            f"importlib.import_module({_APP_MODULES[app]!r})\n"
            f"print(*[m for m in {heavy!r} if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == []
