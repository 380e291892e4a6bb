"""A test and debug harness: run one engine backup in a process of its own, speaking JSON lines.

    python -m tests.engine_worker backup SPEC.json [--resume CHECKPOINT.json]

Nothing in the product uses it: the runner runs engines in worker threads of the server
process. Tests use it for a process they can kill outright in the middle of a backup
(SIGKILL, no clean-up), then check that the engine resumes or cleans up after it
(tests/test_engine_contract.py, tests/test_engine_rsync.py).

SPEC.json holds {"engine", "sources", "destination", "include", "exclude", "options"}.
Stdout gets one JSON object per line: progress, checkpoint, warning, then result or
error. Stdin takes "pause", "resume", "cancel" and "interrupt" lines. SIGTERM interrupts
(stop at a safe point, keep the partial output for resume).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engines.contract import BackupSpec
from engines.control import RunControl
from engines.errors import EngineError
from engines.progress import Progress
from engines.registry import get_engine


class JsonLinesReporter:
    """Writes what the engine reports to stdout, one JSON object per line."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def emit(self, message: Mapping[str, Any]) -> None:
        """Write one message and flush, so the reader sees it at once."""
        with self._lock:
            sys.stdout.write(json.dumps(message, ensure_ascii=False) + "\n")
            sys.stdout.flush()

    def progress(self, progress: Progress) -> None:
        """Report progress."""
        self.emit({"kind": "progress", **progress.as_dict()})

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Report a checkpoint."""
        self.emit({"kind": "checkpoint", "state": dict(state)})

    def warning(self, message: str) -> None:
        """Report a warning."""
        self.emit({"kind": "warning", "message": message})


def spec_from_dict(data: Mapping[str, Any]) -> BackupSpec:
    """Build a BackupSpec from the JSON a caller wrote."""
    return BackupSpec.build(data["sources"], data["destination"], data.get("include", ()),
                            data.get("exclude", ()), data.get("options", {}))


def _read_commands(control: RunControl) -> None:
    for line in sys.stdin:
        command = line.strip()
        if command == "pause":
            control.pause()
        elif command == "resume":
            control.resume()
        elif command == "cancel":
            control.cancel()
        elif command == "interrupt":
            control.interrupt()


def main(argv: list[str] | None = None) -> int:
    """Run a backup and report it on stdout; exit 0 on success, 1 on a reported error."""
    parser = argparse.ArgumentParser(prog="python -m tests.engine_worker")
    parser.add_argument("operation", choices=["backup"])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--resume", type=Path, default=None)
    args = parser.parse_args(argv)
    reporter = JsonLinesReporter()
    control = RunControl()
    signal.signal(signal.SIGTERM, lambda *_: control.interrupt())
    threading.Thread(target=_read_commands, args=(control,), daemon=True).start()
    try:
        data = json.loads(args.spec.read_text())
        resume = json.loads(args.resume.read_text()) if args.resume else None
        engine = get_engine(data["engine"])
        spec = spec_from_dict(data)
        engine.check_ready(spec)
        result = engine.backup(spec, control, reporter, resume)
    except EngineError as err:
        reporter.emit({"kind": "error", "type": type(err).__name__, "error": str(err)})
        return 1
    except (OSError, ValueError, KeyError) as err:
        reporter.emit({"kind": "error", "type": type(err).__name__, "error": str(err)})
        return 1
    reporter.emit({"kind": "result", "snapshot_id": result.snapshot_id, "files": result.files,
                   "bytes": result.bytes, "duration": result.duration,
                   "warnings": list(result.warnings)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
