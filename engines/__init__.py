"""Backup engines: mirror, archive, rsync and restic; they know nothing of the web or the log."""
