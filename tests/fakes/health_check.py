"""A stand-in for the Collector's health_check extension: GET answers the status a test sets.

The real extension (`http://collector:13133/`) answers 503 while the Collector starts or shuts
down and 200 once its pipelines run. The server runs in a daemon thread, so synchronous tests and
asyncio tests alike can use it; `requests` records each path asked for.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


class FakeHealthCheck:
    def __init__(self, status: int = 503) -> None:
        self.status = status
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                status = owner.status
                body = json.dumps({"status": "Server available" if status == 200 else "Server not available"})
                encoded = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                self.end_headers()
                self.wfile.write(encoded)

            def log_message(self, format: str, *args: object) -> None:  # keep test output clean
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-health-check", daemon=True)

    def __enter__(self) -> FakeHealthCheck:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
