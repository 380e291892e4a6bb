"""The rsync engine as a package; what other code imports from `engines.rsync`."""

from engines.rsync.engine import RsyncEngine

__all__ = ["RsyncEngine"]
