"""The application: commands, runner, scheduler, recovery, retention, notifications."""
