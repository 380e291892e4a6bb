"""The `backup-manager` command: `serve`, and `events` (the audit / replay tool)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from events import audit
from events.store import (
    ChainBroken,
    EventsMissing,
    LogTooNew,
    LogUnreadable,
    MarkUnreadable,
)
from models.settings import LOG_LEVELS
from server.auth import create_token, read_token, token_path
from server.config import (
    DATA_ENV,
    Config,
    ConfigFileError,
    FileConfig,
    default_data_dir,
    is_host_name,
    load_config_file,
)
from server.datadir import DataDirBusy
from server.logs import setup_console_logging
from server.security import is_loopback
from storage.replay import replay_into
from storage.selfbackup import LogDamaged, SelfBackupError, backup_state

log = logging.getLogger("backup_manager")

EXIT_OK, EXIT_BAD_LOG, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
# How long the process waits, after its clean stop, for threads a stop during start-up
# left busy (see _leave_stragglers).
STRAGGLER_GRACE = 0.3


def _add_data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help=f"data directory (default: the config file's data, "
                             f"${DATA_ENV} or ./data)")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="a TOML file with data, host, port, log_level and "
                             "allowed_hosts; flags given here win over it")


def _host_name_arg(value: str) -> str:
    if not is_host_name(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a host name (like "
                                         "backups.example.lan, without scheme or port)")
    return value


def _file_config(args: argparse.Namespace) -> FileConfig:
    """The --config file's settings, or none; a bad file raises ConfigFileError."""
    return FileConfig() if args.config is None else load_config_file(args.config)


def _data_dir(args: argparse.Namespace, file: FileConfig) -> Path:
    return args.data or file.data or default_data_dir()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(prog="backup-manager",
                                     description="Self-hosted backup manager.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the web UI and API")
    serve.add_argument("--host", default=None, help="address to bind (default loopback)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8080)")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       type=_host_name_arg,
                       help="a host name the server answers to besides loopback (repeat "
                            "for more), e.g. the name a reverse proxy forwards")
    serve.add_argument("--log-level", default=None, choices=LOG_LEVELS,
                       help="the level to start with (default: the Settings page's, INFO)")
    _add_data_arg(serve)

    token = sub.add_parser("token", help="print the access token (made the first time); "
                                         "serving beyond loopback needs it")
    token.add_argument("--rotate", action="store_true",
                       help="make a new token (signs every browser out)")
    _add_data_arg(token)

    events = sub.add_parser("events", help="audit and replay the event log (read-only)")
    ev_sub = events.add_subparsers(dest="action", required=True)
    for name, text in (("verify", "check seq continuity and the hash chain"),
                       ("export", "write every event as JSON Lines to stdout"),
                       ("stats", "count events by type, with first and last time")):
        _add_data_arg(ev_sub.add_parser(name, help=text))
    replay = ev_sub.add_parser("replay", help="rebuild the YAML projections into a directory")
    replay.add_argument("--out", type=Path, required=True, help="an empty or new directory")
    _add_data_arg(replay)
    backup = ev_sub.add_parser("backup", help="copy the event log, its YAML and the access "
                                              "token into a new directory, safely while "
                                              "the server runs")
    backup.add_argument("--out", type=Path, required=True,
                        help="a new or empty directory (it becomes a data directory)")
    _add_data_arg(backup)
    tail = ev_sub.add_parser("tail", help="print events, optionally following new ones")
    tail.add_argument("--since", type=int, default=None,
                      help="print events after this seq (default: the last 10)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    _add_data_arg(tail)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from server.app import create_app

    file = _file_config(args)
    host: str = args.host or file.host or "127.0.0.1"
    port: int = args.port if args.port is not None else file.port or 8080
    if not 0 < port < 65536:
        print(f"error: port {port} is out of range", file=sys.stderr)
        return EXIT_USAGE
    data_dir = _data_dir(args, file)
    if not is_loopback(host) and read_token(data_dir) is None:
        # Anyone on the network could otherwise read and overwrite files through it.
        print(f"error: serving on {host} makes this server reachable from other "
              "machines, so it needs an access token first: run\n"
              f"  backup-manager token --data {data_dir}\n"
              "then sign in with the token it prints (or send it as "
              "'Authorization: Bearer <token>' to the API)", file=sys.stderr)
        return EXIT_USAGE
    log_level = args.log_level or file.log_level
    setup_console_logging(log_level or "INFO")
    config = Config(data_dir=data_dir, host=host, port=port, log_level=log_level,
                    allowed_hosts=(*file.allowed_hosts, *args.allowed_host),
                    config_file=args.config and args.config.resolve())
    try:
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        # Said here, before binding, so it is not mistaken for a problem with the port.
        print(f"error: cannot use {config.data_dir} as the data directory: "
              f"{err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    app = create_app(config)
    # First, before the store opens: a stop signal while it starts up is handled too.
    app.on_startup.insert(0, _stop_once_on_signal)
    # Until the app installs its reload handler (and after it removes it), SIGHUP's
    # default action would end the process without a clean stop.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        web.run_app(app, host=config.host, port=config.port, handle_signals=False,
                    print=lambda _msg: log.info("serving on http://%s:%d with data in %s",
                                                config.host, config.port,
                                                config.data_dir.resolve()),
                    shutdown_timeout=10)
    except (DataDirBusy, EventsMissing, LogTooNew, ChainBroken, LogUnreadable,
            MarkUnreadable) as err:
        # Exit 2: the service manager does not restart it (RestartPreventExitStatus); a
        # damaged log needs a person, and serving it would pass altered data off as true.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        # Not a usage error: a port still held by a process on its way out is free a
        # moment later, so a service manager should try again (systemd: on-failure).
        print(f"error: cannot serve on {config.host}:{config.port}: {err.strerror or err}",
              file=sys.stderr)
        return EXIT_UNAVAILABLE
    _leave_stragglers()
    return EXIT_OK


def _leave_stragglers(grace: float = STRAGGLER_GRACE) -> None:
    """End the process now if a thread outlives the clean stop by more than `grace`.

    By now the log is closed and every snapshot written whole. A thread still going is
    one whose task a stop during start-up cancelled (loading files, a read): Python
    would wait for it at exit, so a stop signal could take minutes. What such a thread
    writes is written atomically, so ending here is as safe as a crash at this point.
    """
    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in threading.enumerate()
            if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if left:
        log.warning("stopped; not waiting for threads still busy: %s", ", ".join(left))
        logging.shutdown()
        sys.stdout.flush()
        os._exit(EXIT_OK)


async def _stop_once_on_signal(app: web.Application) -> None:
    """SIGINT/SIGTERM start one clean stop; more of them while it runs are ignored.

    A second signal would cancel the shutdown half-way (runs not recorded as
    interrupted, the log not closed, the process hung on its database threads). Ctrl-C
    on the single-file build always sends two: the terminal signals the whole process
    group, and the launcher forwards its own copy to Python.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def stop() -> None:
        # Two signals that arrive together are both already queued as calls to this by
        # the time the first one runs: only the first may raise.
        if stopping.is_set():
            return
        stopping.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        log.info("stopping: runs pause at a safe point and resume on the next start")
        raise GracefulExit()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)


def _token(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args, _file_config(args))
    try:
        token, made = create_token(data_dir, rotate=args.rotate)
    except OSError as err:
        print(f"error: cannot keep the access token in {data_dir}: {err.strerror or err}",
              file=sys.stderr)
        return EXIT_USAGE
    print(token)
    if made:
        print(f"(kept in {token_path(data_dir)}, mode 0600; a running server reads it on "
              "its next start)", file=sys.stderr)
    return EXIT_OK


def _events(args: argparse.Namespace) -> int:
    db_path = _data_dir(args, _file_config(args)) / "events.db"
    if args.action == "replay":
        out: Path = args.out
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            print(f"error: {out} is not an empty directory; replay writes into a new or "
                  "empty one so it never overwrites live files", file=sys.stderr)
            return EXIT_USAGE
    if args.action == "backup":
        return _self_backup(db_path.parent, args.out)
    if args.action == "tail" and args.follow:
        return _tail_follow(db_path, args.since)
    try:
        return _read_log(args, db_path)
    except sqlite3.DatabaseError as err:  # damaged past its first page
        raise LogUnreadable(db_path, err) from err


def _read_log(args: argparse.Namespace, db_path: Path) -> int:
    with closing(audit.open_readonly(db_path)) as conn:
        if args.action == "verify":
            result = audit.verify(conn)
            try:
                lost = audit.acknowledged_problem(conn, db_path) if result.ok else None
            except MarkUnreadable as err:
                lost = str(err)
            if lost is not None:
                print(f"DAMAGED: {lost}")
                return EXIT_BAD_LOG
            if result.ok:
                print(f"OK: {result.checked} events, hash chain intact, head {result.head_hash}")
                return EXIT_OK
            print(f"DAMAGED at seq {result.bad_seq}: {result.reason} "
                  f"({result.checked} events before it are intact)")
            return EXIT_BAD_LOG
        if args.action == "export":
            for ev in audit.iter_events(conn):
                sys.stdout.write(ev.to_json() + "\n")
            return EXIT_OK
        if args.action == "stats":
            print(json.dumps(audit.stats(conn), indent=2))
            return EXIT_OK
        if args.action == "replay":
            projection = replay_into(conn, args.out)
            print(f"replayed {projection.seq} events: {len(projection.jobs)} jobs and "
                  f"settings.yaml written to {args.out}")
            return EXIT_OK
        since = args.since if args.since is not None else max(0, audit.last_seq(conn) - 10)
        for ev in audit.tail(conn, db_path, since):
            sys.stdout.write(ev.to_json() + "\n")
        return EXIT_OK


def _self_backup(data_dir: Path, out: Path) -> int:
    if not (data_dir / "events.db").is_file():
        raise audit.LogMissing(f"no event log at {data_dir / 'events.db'} "
                               "(is --data the right directory?)")
    try:
        copy = backup_state(data_dir, out)
    except SelfBackupError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_LOG if isinstance(err, LogDamaged) else EXIT_USAGE
    except OSError as err:
        print(f"error: cannot write the copy to {out}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"OK: {copy.events} events (head {copy.head_hash}), {copy.jobs} jobs, copied to "
          f"{copy.path}; to restore, stop the server and start it with --data {copy.path}")
    return EXIT_OK


def _tail_follow(db_path: Path, since: int | None) -> int:
    if since is None:
        with closing(audit.open_readonly(db_path)) as conn:
            since = max(0, audit.last_seq(conn) - 10)
    # SIGTERM ends a follow the way Ctrl-C does: quietly, with exit 0.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for ev in audit.follow(db_path, since):
            sys.stdout.write(ev.to_json() + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "token":
            return _token(args)
        return _events(args)
    except (audit.LogMissing, audit.LogTooNew, ConfigFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (LogUnreadable, ChainBroken) as err:  # ChainBroken: a tail met an altered row
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_LOG
    except BrokenPipeError:
        # `events export | head` closes the pipe early; that is not an error.
        sys.stderr.close()
        return EXIT_OK
