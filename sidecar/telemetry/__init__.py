"""The sidecar's own telemetry: Prometheus metrics, JSON logs, typed events."""
