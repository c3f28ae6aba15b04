"""The ``workbench`` command: a thin layer that parses arguments and calls the Python API.

Each concern registers its own sub-commands from a small ``_cli.py`` module beside its code;
this file only assembles them, configures logging and turns :class:`WorkbenchError` into a
one-paragraph message and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from workbench._memory import prefer_jemalloc_for_arrow
from workbench.exceptions import WorkbenchError

if TYPE_CHECKING:
    from workbench.config import Settings

__all__ = ["main", "settings_from_args"]

logger = logging.getLogger(__name__)

#: Modules that define ``register(subparsers)``; each adds its sub-commands.
_COMMAND_MODULES = (
    "workbench.broker._cli",
    "workbench.data._cli",
    "workbench.ml._cli",
    "workbench.pipeline._cli",
    "workbench.replay._cli",
    "workbench.reports._cli",
    "workbench.runtime._cli",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment with the global CLI options on top."""
    from workbench.config import get_settings  # pydantic: not for --help

    return get_settings(home=args.home, kafka_bootstrap_servers=args.bootstrap_servers)


#: Errors of a folder the workbench cannot write.
_UNWRITABLE: Final = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})

#: Commands parsed with their own module only: ``workbench app NAME`` starts an app process, whose
#: start-up (to its first commit) would otherwise import every command's module (replay, data
#: generator, pandas...): ~0.3-0.7 s of CPU an app never uses.
_SOLE_MODULE: Final = {"app": "workbench.pipeline._cli"}


def instance_ids(text: str) -> list[int]:
    """An ``--instances`` value: comma-separated instance ids such as ``3,17,42`` (an argparse type)."""
    # "24,,31" is a typo, not a list of two: an empty id or a stray comma is refused like any bad id
    try:
        return [int(part) for part in text.split(",")]
    except ValueError as exc:
        msg = f"--instances takes comma-separated instance ids such as 3,17,42. Got {text!r}."
        raise argparse.ArgumentTypeError(msg) from exc


_ID_LIST: Final = re.compile(r"[\d,]+")


class InstanceIdsThenSources(argparse.Action):
    """``--instances 18 37 a.parquet`` (an argparse action, ``nargs="+"``): the leading values made of
    digits and commas are instance ids (``3,17`` and ``3 17`` alike; a typo such as ``24,,31`` is
    refused), the first other value and those after it are positional sources, kept in
    ``sources_after_instances`` (several ids after the option swallowed the sources that followed)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        ids: list[int] = []
        rest: list[str] = []
        for value in values:
            if rest or not _ID_LIST.fullmatch(value):
                rest.append(value)
                continue
            try:
                ids.extend(instance_ids(value))
            except argparse.ArgumentTypeError as exc:
                parser.error(str(exc))
        if not ids:
            parser.error(f"--instances takes comma-separated instance ids such as 3,17,42. Got {values[0]!r}.")
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), *ids])
        namespace.sources_after_instances = [*getattr(namespace, "sources_after_instances", []), *rest]


def _command(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (the first word that is neither a global option nor its value)."""
    words = iter(argv)
    for word in words:
        if word in ("--home", "--bootstrap-servers"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and ``--help``): every command's, or only ``command``'s
    when that command has a module of its own (:data:`_SOLE_MODULE`)."""
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Replay and analyse Redshift (Redset) query logs through Kafka.",
    )
    parser.add_argument("--home", help="WORKBENCH_HOME: where everything is written")
    parser.add_argument(
        "--bootstrap-servers",
        help="KAFKA_BOOTSTRAP_SERVERS of an existing cluster (default: the managed local Kafka)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = (_SOLE_MODULE[command],) if command in _SOLE_MODULE else _COMMAND_MODULES
    for module_name in modules:
        importlib.import_module(module_name).register(subparsers)
    _say_defaults(parser)
    return parser


def _say_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option with a default says it in ``--help`` (``train --help`` showed none of its three),
    unless its help already names it; an option without help gets its default as help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                _say_defaults(sub)
        elif (action.option_strings and action.help is not argparse.SUPPRESS
              and not isinstance(action.default, bool) and action.default not in (None, argparse.SUPPRESS)
              and "default" not in (action.help or "")):
            shown = f"{action.default:,}" if isinstance(action.default, int) else str(action.default)
            action.help = f"{action.help} (default {shown})" if action.help else f"default {shown}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script."""
    prefer_jemalloc_for_arrow()  # before the command modules import pyarrow
    os.umask(0o077)  # everything the workbench writes (home, stores, logs, reports) is owner-only
    parser = build_parser(_command(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # Third-party chatter drowns the progress output at INFO.
    for noisy in ("quixstreams", "kafka", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not args.verbose else logging.DEBUG)
    # librdkafka's own lines ("FAIL ... Connection refused") at their level: a command says what failed
    # in one line of its own (`status` printed raw ERROR lines above it while the broker restarted)
    logging.getLogger("workbench.kafka").setLevel(logging.CRITICAL if not args.verbose else logging.DEBUG)
    previous = _terminate_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except WorkbenchError as exc:
        print(f"workbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # a notebook run cut short leaves asyncio tasks whose "exception was never retrieved" (a dead
        # kernel) would print a traceback under the one-line message at exit
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        terminated = isinstance(exc, Terminated)
        print(f"workbench: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:
        # The reader went away (`workbench models show | head`): stop quietly, as other CLI tools do.
        # Python would print the error again when it flushes stdout at exit, so point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # 128 + SIGPIPE, what a shell reports for a command a closed pipe stopped
    except OSError as exc:
        if exc.errno == errno.ENOENT and exc.filename:
            # a path that is not there (an input named wrong, a folder under one that cannot be made)
            print(f"workbench: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
            return 2
        if exc.errno not in _UNWRITABLE:
            return _unexpected(exc, args.verbose)
        # a home on a read-only mount, a folder of another user, a full disk: the user's to fix, not a crash
        print(f"workbench: error: {exc.strerror}: {exc.filename} (WORKBENCH_HOME and the other folder "
              "settings say where the workbench writes)", file=sys.stderr)
        return 2
    except Exception as exc:
        return _unexpected(exc, args.verbose)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a CI cancel, systemd) while a command runs."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def _terminate_as_interrupt() -> Any:
    """Make SIGTERM undo a command's work as Ctrl-C does (the previous handler, to restore; None when
    it was not changed). Killed by the default action, `start` left its broker running, `demo` a whole
    workbench no `stop` saw, and `generate`, `prepare` and `report` their partial files. A command that
    handles SIGTERM itself (the replay, the apps) installs its own handler over this one."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None
    if os.environ.get("WORKBENCH_PROCESS_ROLE"):  # (_lifeline.ROLE_ENV) a process the workbench started:
        return None  # its supervisor stops it with SIGTERM and SIGKILL, as ever
    from workbench._lifeline import unblock_stop_signals

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    unblock_stop_signals()  # inherited blocked, `kill` went unheard: the command finished and exited 0
    return previous


def _unexpected(exc: BaseException, verbose: bool) -> int:
    """One line for an error no check named (an argument a library refused, a path it could not use);
    the traceback with ``--verbose``, for a report."""
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    print(f"workbench: error: {type(exc).__name__}: {text or '(no message)'} (run again with --verbose for the "
          "traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
