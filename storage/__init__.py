"""YAML projections of the event log and the atomic file writes they rely on."""
