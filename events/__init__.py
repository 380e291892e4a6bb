"""The append-only event log: event types, the SQLite store, the notifier and the audit tool."""
