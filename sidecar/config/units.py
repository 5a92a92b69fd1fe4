"""Durations ("5s", "250ms") and sizes, as the Collector writes them."""

from __future__ import annotations

import re
from typing import Any

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Duration(float):
    """A duration in seconds, written in YAML like Go's time.ParseDuration: 5s, 250ms, 1m30s."""

    @classmethod
    def parse(cls, text: str) -> Duration:
        stripped = text.strip()
        if stripped == "0":
            return cls(0.0)
        pos = 0
        total = 0.0
        while pos < len(stripped):
            match = _DURATION_PART.match(stripped, pos)
            if match is None:
                raise ValueError(f"must be a duration such as 5s, 250ms or 1m30s (got {text!r})")
            total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos == 0:
            raise ValueError(f"must be a duration such as 5s, 250ms or 1m30s (got {text!r})")
        return cls(total)

    def __repr__(self) -> str:
        return f"Duration({float(self)}s)"


def decode_hook(type_: type, obj: Any) -> Any:
    """msgspec dec_hook for the custom scalar types of the schema."""
    if type_ is Duration:
        if isinstance(obj, bool) or not isinstance(obj, str):
            raise ValueError(f"must be a duration string such as 5s or 250ms (got {obj!r})")
        return Duration.parse(obj)
    raise NotImplementedError(f"no decoder for {type_!r}")


def encode_hook(obj: Any) -> Any:
    if isinstance(obj, Duration):
        return f"{float(obj)}s"
    raise NotImplementedError(f"cannot encode {type(obj)!r}")


MIB = 1024 * 1024


def mib_to_bytes(mib: float) -> int:
    return int(mib * MIB)
