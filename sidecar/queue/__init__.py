"""Per-exporter sending queues: memory and SQLite, one interface."""
