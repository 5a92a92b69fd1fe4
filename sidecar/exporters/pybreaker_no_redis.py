"""pybreaker, imported without its optional Redis storage.

pybreaker's module body runs `from redis import Redis` to offer CircuitBreakerRedisStorage whenever
redis-py is installed, and it is (fleet mode needs it). That one import loads redis, redis.asyncio and,
through redis' observability hooks, whatever they find: +10 MiB RSS and ~0.3 s at every start, in every
sidecar, fleet mode or not (measured in bench/notes.md, "Footprint"). The sidecar never uses that storage
(fleet mode shares breaker state through its own module, sidecar/fleet), so pybreaker is imported with
`redis` marked absent in sys.modules, the import system's documented way to make an import raise
ImportError; pybreaker then sets HAS_REDIS_SUPPORT = False and works as without redis-py. When redis is
already loaded (fleet mode started first), pybreaker is imported as it is.
"""

from __future__ import annotations

import sys

_hidden = "redis" not in sys.modules
if _hidden:
    sys.modules["redis"] = None  # type: ignore[assignment]
try:
    import pybreaker
finally:
    if _hidden and "redis" in sys.modules and sys.modules["redis"] is None:
        del sys.modules["redis"]

__all__ = ["pybreaker"]
