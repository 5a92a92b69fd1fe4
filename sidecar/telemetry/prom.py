"""prometheus_client's metrics and its text exposition format, without what its package imports for serving.

`import prometheus_client` runs its package `__init__`, which imports `prometheus_client.exposition`, and
that module imports http.server, socketserver, wsgiref, urllib.request, email, gzip and ssl at its top for
the HTTP servers and the push gateway client the sidecar never uses (its endpoint is
sidecar/telemetry/http.py): +3.4 MiB RSS (+2.6 MiB of Python objects) and ~80 ms of start-up on every pod
(bench/notes.md, Footprint). Here the package is registered without running its `__init__`, the
submodules the sidecar needs (metrics, registry, process_collector, and the escaping helpers of
openmetrics.exposition) are imported as usual, and `generate_latest` writes the same Prometheus text format
as `prometheus_client.exposition.generate_latest` (tests/unit/test_prom.py compares the two byte for byte).

Anyone in the process who asks the package for a name it has not loaded (`from prometheus_client import
start_http_server`, a test, a plugin) gets the complete package: the first such lookup runs the real
`__init__` into the same module object, so classes stay the same objects.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any


def _register_without_init(name: str) -> None:
    """Put package `name` in sys.modules with its `__path__` but without executing its `__init__`; a lookup
    of a missing attribute that is not a submodule executes the `__init__` then (and only then)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an importable package")
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(attr: str) -> Any:
        # `from . import values` in a submodule asks the package for `values` before importing it: a
        # submodule is left to the import system, which imports it and sets the attribute.
        if importlib.util.find_spec(f"{name}.{attr}") is not None:
            raise AttributeError(attr)
        del module.__dict__["__getattr__"]
        loader.exec_module(module)
        return getattr(module, attr)

    module.__dict__["__getattr__"] = complete
    sys.modules[name] = module


def _load() -> ModuleType:
    _register_without_init("prometheus_client")
    return sys.modules["prometheus_client"]


_load()

# These imports must follow _load(): they find the package registered above.
from prometheus_client.metrics import Counter, Gauge, Histogram  # noqa: E402
from prometheus_client.openmetrics.exposition import (  # noqa: E402
    ALLOWUTF8,
    UNDERSCORES,
    _escape,
    _is_valid_legacy_metric_name,
    escape_label_name,
    escape_metric_name,
)
from prometheus_client.process_collector import ProcessCollector  # noqa: E402
from prometheus_client.registry import Collector, CollectorRegistry  # noqa: E402
from prometheus_client.samples import Sample  # noqa: E402
from prometheus_client.utils import floatToGoString  # noqa: E402

__all__ = ["CONTENT_TYPE_LATEST", "CollectorRegistry", "Counter", "Gauge", "Histogram", "ProcessCollector",
           "generate_latest"]

# prometheus_client.exposition.CONTENT_TYPE_LATEST (CONTENT_TYPE_PLAIN_1_0_0), the type generate_latest writes.
CONTENT_TYPE_LATEST = "text/plain; version=1.0.0; charset=utf-8"


def _sample_line(sample: Sample, escaping: str) -> str:
    labels = ",".join(f'{escape_label_name(k, escaping)}="{_escape(v, ALLOWUTF8, False)}"'  # type: ignore[arg-type]
                      for k, v in sorted(sample.labels.items()))
    timestamp = "" if sample.timestamp is None else f" {int(float(sample.timestamp) * 1000):d}"  # type: ignore[arg-type]
    name = escape_metric_name(sample.name, escaping)
    value = floatToGoString(sample.value)
    if escaping != ALLOWUTF8 or _is_valid_legacy_metric_name(sample.name):
        return f"{name}{{{labels}}} {value}{timestamp}\n" if labels else f"{name} {value}{timestamp}\n"
    return f"{{{name}{',' if labels else ''}{labels}}} {value}{timestamp}\n"


# OpenMetrics types written under the name and type the Prometheus text format has for them.
_PROMETHEUS_TYPE = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}
_NAME_SUFFIX = {"counter": "_total", "info": "_info"}
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")  # samples moved to gauges of their own after the metric


def _help(name: str, documentation: str, escaping: str) -> str:
    escaped = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {escape_metric_name(name, escaping)} {escaped}\n"


def generate_latest(registry: Collector, escaping: str = UNDERSCORES) -> bytes:
    """The Prometheus text format of `registry`, as prometheus_client.exposition.generate_latest writes it."""
    output: list[str] = []
    for metric in registry.collect():
        try:
            name = metric.name + _NAME_SUFFIX.get(metric.type, "")
            output.append(_help(name, metric.documentation, escaping))
            kind = _PROMETHEUS_TYPE.get(metric.type, metric.type)
            output.append(f"# TYPE {escape_metric_name(name, escaping)} {kind}\n")
            openmetrics_only: dict[str, list[str]] = {}
            for sample in metric.samples:
                suffix = next((s for s in _OPENMETRICS_ONLY if sample.name == metric.name + s), None)
                if suffix is None:
                    output.append(_sample_line(sample, escaping))
                else:
                    openmetrics_only.setdefault(suffix, []).append(_sample_line(sample, escaping))
        except Exception as exception:
            exception.args = (exception.args or ("",)) + (metric,)
            raise
        for suffix, lines in sorted(openmetrics_only.items()):
            output.append(_help(metric.name + suffix, metric.documentation, escaping))
            output.append(f"# TYPE {escape_metric_name(metric.name + suffix, escaping)} gauge\n")
            output.extend(lines)
    return "".join(output).encode("utf-8")
