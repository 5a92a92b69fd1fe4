"""Collector-style YAML configuration: schema, loading and validation."""

from sidecar.config.load import ConfigError, load_config, load_config_text
from sidecar.config.schema import Config

__all__ = ["Config", "ConfigError", "load_config", "load_config_text"]
