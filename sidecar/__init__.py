"""OTLP resilience sidecar."""

__version__ = "0.1.0"
