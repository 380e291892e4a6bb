"""The restic engine as a package; what other code imports from `engines.restic`."""

from engines.restic.cli import restic_command, restic_env, restore_keeps_holes
from engines.restic.engine import ResticEngine
from engines.restic.jobs import job_tag
from engines.restic.output import BackupOutput
from engines.restic.paths import restic_pattern

__all__ = ["BackupOutput", "ResticEngine", "job_tag", "restic_command", "restic_env",
           "restic_pattern", "restore_keeps_holes"]
