"""The child bench.engine_memory measures: one backup (then the listing that confirms it,
as the server does) or one restore, importing only the engines, as a server's engine
thread would use them.

`python -m bench.engine_child backup ENGINE SRC DEST` or
`python -m bench.engine_child restore ENGINE SRC DEST TARGET`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from engines.base import BackupSpec, NullReporter, RunControl
from engines.registry import get_engine


def main(argv: list[str]) -> None:
    """Run one backup or restore of the latest snapshot."""
    action, engine_name, src, dest = argv[:4]
    engine = get_engine(engine_name)
    spec = BackupSpec.build([src], dest)
    ctrl, rep = RunControl(), NullReporter()
    if action == "backup":
        snapshot = engine.backup(spec, ctrl, rep).snapshot_id
        if snapshot not in {s.id for s in engine.snapshots(spec)}:
            raise SystemExit("the snapshot is not listed back")
    else:
        latest = engine.snapshots(spec)[-1].id
        engine.restore(spec, latest, Path(argv[4]), ctrl, rep)


if __name__ == "__main__":
    main(sys.argv[1:])
