"""``workbench kafka start|stop|status|fetch`` and ``workbench topics``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.config import Settings

import argparse
import shlex
import sys

__all__ = ["register"]


def _settings(args: argparse.Namespace) -> Settings:
    from workbench.cli import settings_from_args

    settings = settings_from_args(args)
    if getattr(args, "port", None):
        settings = settings.with_overrides(kafka_port=args.port)
    if getattr(args, "listeners", None):
        settings = settings.with_overrides(kafka_listeners=args.listeners)
    return settings


def _start(args: argparse.Namespace) -> int:
    from workbench.broker import ensure_broker

    status = ensure_broker(_settings(args))
    print(status)
    return 0


def _stop(args: argparse.Namespace) -> int:
    from workbench.broker import LocalKafka

    settings = _settings(args)
    if not settings.manages_kafka:
        print(f"external cluster at {settings.bootstrap_servers}: not managed, nothing to stop")
        return 0
    stopped = LocalKafka(settings).stop()
    print("stopped" if stopped else "not running")
    return 0


def _status(args: argparse.Namespace) -> int:
    from workbench.broker import broker_status

    status = broker_status(_settings(args))
    print(status)
    print(f"bootstrap servers: {status.bootstrap_servers}")
    return 0 if status.running else 1


def _fetch(args: argparse.Namespace) -> int:
    from workbench.broker import ensure_kafka_jars

    libs = ensure_kafka_jars(_settings(args))
    print(f"Kafka jars ready in {libs}")
    return 0


def _env(args: argparse.Namespace) -> int:
    from workbench.broker._security import client_env

    settings = _settings(args)
    if not settings.manages_kafka:
        print(f"external cluster at {settings.bootstrap_servers}: its settings are yours, nothing to print")
        return 1
    from workbench.broker._local import LocalKafka

    LocalKafka(settings).check_running_listeners()  # a running broker's listeners, not the settings', count
    listener = args.listener or settings.kafka_listeners.split(",")[0]
    for name, value in client_env(settings, listener).items():
        print(f"export {name}={shlex.quote(value)}")
    if listener.upper().startswith("SASL_"):
        # the password itself is never printed: the line reads it from its owner-only file
        reader = 'import json,sys; print(json.load(open(sys.argv[1]))["password"])'
        print(f'export KAFKA_SASL_PASSWORD="$(python3 -c {shlex.quote(reader)} '
              f'{shlex.quote(str(settings.kafka_credentials_file))})"')
    return 0


def _topics(args: argparse.Namespace) -> int:
    from workbench.broker import ensure_topics, topic_specs

    settings = _settings(args)
    if settings.manages_kafka:
        from workbench.broker import LocalKafka

        if LocalKafka(settings).pid() is None:
            # it waited 30 s for a broker that was not there (replay-control says so at once)
            print(f"workbench: error: the local Kafka of {settings.home} is not running: start it with "
                  "`workbench kafka start` (which creates the topics too) or `workbench start`, or set "
                  "KAFKA_BOOTSTRAP_SERVERS to an existing cluster.", file=sys.stderr)
            return 2
    ensure_topics(settings)
    for spec in topic_specs(settings):
        print(f"{spec.name}: {spec.partitions} partition{'' if spec.partitions == 1 else 's'}, "
              f"retention.ms={spec.config['retention.ms']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the broker commands."""
    kafka = subparsers.add_parser("kafka", help="manage the local Apache Kafka")
    actions = kafka.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, func, help_text in (
        ("start", _start, "start the local Kafka (or check the external cluster) and create topics"),
        ("stop", _stop, "stop the local Kafka"),
        ("status", _status, "print whether the broker runs and its bootstrap address"),
        ("fetch", _fetch, "download the Kafka jars from Maven Central into the cache (once)"),
        ("env", _env, "print the KAFKA_* variables another client sets to reach one listener (shell lines)"),
    ):
        parser = actions.add_parser(name, help=help_text)
        if name != "fetch":  # the download needs no broker
            parser.add_argument("--port", type=int, help="client port of the local broker (WORKBENCH_KAFKA_PORT)")
            parser.add_argument(
                "--listeners", metavar="LIST",
                help="listeners of the local broker, e.g. plaintext,sasl_plaintext,ssl,sasl_ssl; the first is on "
                     "--port and is the one the workbench's clients use, the others on port+2, +3, ... "
                     "(WORKBENCH_KAFKA_LISTENERS)")
        if name == "env":
            parser.add_argument("--listener", help="which listener (default: the first)")
        parser.set_defaults(func=func)
    topics = subparsers.add_parser("topics", help="create or check the workbench's topics (idempotent)")
    topics.set_defaults(func=_topics)
