"""Housekeeping: the node's figures on a PUB socket every few seconds, and the same figures as
Prometheus metrics when the config asks for them.

PUB messages are two parts: the topic ``housekeeping`` and one JSON object (docs/operations.md).
The HTTP endpoint serves ``GET /metrics`` from a thread of its own (:mod:`edge.node.metrics`
makes the metric families); it only reads the latest figures, which the daemon's thread replaces
as a whole, and the frame-time histograms the daemon observes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import zmq
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edge.errors import TransportError
from edge.liveness import keep_alive
from edge.log import get_logger
from edge.node.metrics import FrameTimings, node_registry

log = get_logger(__name__)

TOPIC = b"housekeeping"


class Housekeeping:
    """Owns the housekeeping PUB socket and, when asked, the Prometheus HTTP server."""

    def __init__(self, address: str, prometheus_address: str = "", context: zmq.Context[Any] | None = None) -> None:
        self._latest: dict[str, Any] = {}
        self._sock: zmq.Socket[Any] | None = None
        self._http: ThreadingHTTPServer | None = None
        self._timings: FrameTimings | None = None
        self.endpoint = ""
        self.prometheus_port: int | None = None
        if address:
            ctx = context or zmq.Context.instance()
            self._sock = ctx.socket(zmq.PUB)
            self._sock.setsockopt(zmq.LINGER, 0)
            keep_alive(self._sock)
            try:
                self._sock.bind(address)
            except zmq.ZMQError as exc:
                self.close()
                raise TransportError(f"cannot bind the housekeeping socket ({exc})", where=address) from None
            self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if prometheus_address:
            host, _, port = prometheus_address.rpartition(":")
            registry, self._timings = node_registry(lambda: self._latest)

            class Handler(BaseHTTPRequestHandler):
                def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                    if self.path.rstrip("/") != "/metrics":
                        self.send_error(404, "only /metrics is served here")
                        return
                    body = generate_latest(registry)
                    self.send_response(200)
                    self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

                def log_message(self, *args: Any) -> None:
                    pass

            try:
                self._http = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
            except (OSError, ValueError) as exc:
                self.close()
                raise TransportError(f"cannot serve Prometheus metrics ({exc})", where=prometheus_address) from None
            self.prometheus_port = int(self._http.server_address[1])
            threading.Thread(target=self._http.serve_forever, name="prometheus", daemon=True).start()
        log.info("housekeeping.opened", pub=self.endpoint or None, prometheus_port=self.prometheus_port)

    def observe(self, latency_ms: float, stages_ms: Mapping[str, float]) -> None:
        """A frame finished ``latency_ms`` after it arrived, its stages taking ``stages_ms``."""
        if self._timings is not None:
            self._timings.observe(latency_ms, stages_ms)

    def publish(self, figures: dict[str, Any]) -> None:
        """Publish one housekeeping message and keep it for the Prometheus endpoint."""
        self._latest = figures
        if self._sock is not None:
            self._sock.send_multipart([TOPIC, json.dumps(figures, default=str).encode()])

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
