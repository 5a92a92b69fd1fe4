"""The Collector's own health_check extension as a health probe (DESIGN.md §4).

An OTLP port that accepts connections does not mean the Collector is ready: while it starts or
shuts down, its health_check extension (`http://collector:13133/`) answers 503. When
`health_probe.health_check_url` is set, the probe is an HTTP GET to that URL and only a 200 is
healthy. With several endpoints the URL names `{host}`, replaced by each endpoint's host, so every
endpoint is judged by its own Collector.
"""

from __future__ import annotations

import re

import aiohttp

from sidecar.core.errors import ExportError, ExportFailure
from sidecar.exporters.transport_http import observe_client_error

HOST_PLACEHOLDER = "{host}"
_SCHEME = re.compile(r"^(?:[a-z][a-z0-9+.\-]*:)?/*", re.IGNORECASE)


def endpoint_host(endpoint: str) -> str:
    """The host of an exporter endpoint as configured: `collector:4317`, `dns:///collector:4317`,
    `http://collector:4318/`, `[::1]:4317` -> `collector`, `collector`, `collector`, `[::1]`."""
    rest = _SCHEME.sub("", endpoint) if "://" in endpoint or endpoint.startswith("dns:") else endpoint
    authority = rest.split("/", 1)[0]
    if authority.startswith("["):
        return authority[: authority.index("]") + 1] if "]" in authority else authority
    return authority.rsplit(":", 1)[0] if ":" in authority else authority


def health_url_for(template: str, endpoint: str) -> str:
    return template.replace(HOST_PLACEHOLDER, endpoint_host(endpoint))


class HealthCheckUrl:
    """GET one URL; 200 is healthy, anything else raises ExportError (classified like an export's answer)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._session: aiohttp.ClientSession | None = None

    async def check(self, timeout: float) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(self.url, timeout=aiohttp.ClientTimeout(total=timeout),
                                         allow_redirects=False) as response:
                body = await response.read()
                if response.status == 200:
                    return
                message = body[:200].decode("utf-8", "replace").strip() or (response.reason or "")
                raise ExportError(ExportFailure(http_status=response.status,
                                                message=f"health check {self.url}: {message}"[:512]))
        except ExportError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ExportError(observe_client_error(exc)) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
