"""Housekeeping: the node's figures on a PUB socket every few seconds, and the same figures as a
Prometheus text endpoint when the config asks for one.

PUB messages are two parts: the topic ``housekeeping`` and one JSON object (docs/operations.md).
The HTTP endpoint serves ``GET /metrics`` from a thread of its own; it only reads the latest
figures, which the daemon's thread replaces as a whole.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import zmq

from edge.errors import TransportError
from edge.liveness import keep_alive
from edge.log import get_logger

log = get_logger(__name__)

TOPIC = b"housekeeping"


def flatten(figures: dict[str, Any], prefix: str = "astro_edge") -> dict[str, float]:
    """Numeric leaves of nested figures as Prometheus-style names (``astro_edge_counters_frames_received``)."""
    out: dict[str, float] = {}
    for key, value in figures.items():
        name = f"{prefix}_{''.join(c if c.isalnum() else '_' for c in str(key))}"
        if isinstance(value, (bool, int, float)):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(flatten(value, name))
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            for i, v in enumerate(value):
                out[f"{name}_{i}"] = float(v)
    return out


def prometheus_text(figures: dict[str, Any]) -> str:
    """The figures in Prometheus' text exposition format, every number a gauge."""
    lines = []
    for name, value in sorted(flatten(figures).items()):
        lines.append(f"# TYPE {name} gauge")
        lines.append(f"{name} {value!r}")
    return "\n".join(lines) + "\n"


class Housekeeping:
    """Owns the housekeeping PUB socket and, when asked, the Prometheus HTTP server."""

    def __init__(self, address: str, prometheus_address: str = "", context: zmq.Context[Any] | None = None) -> None:
        self._latest: dict[str, Any] = {}
        self._sock: zmq.Socket[Any] | None = None
        self._http: ThreadingHTTPServer | None = None
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
            owner = self

            class Handler(BaseHTTPRequestHandler):
                def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                    if self.path.rstrip("/") != "/metrics":
                        self.send_error(404, "only /metrics is served here")
                        return
                    body = prometheus_text(owner._latest).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
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
