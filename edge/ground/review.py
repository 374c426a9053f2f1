"""The ground review desk (``astro-edge ground review``): a web application over a ground folder.

Pages: the record list (filters by node, reason, class and time; sorted by priority, p-value,
time or S/N), a record's page (its cut-out, mask and context as PNG, the probability bars with the
aleatoric / epistemic split, the reasons, the engine's explanation from :mod:`engines.explain`,
the frame's summary, the sky position, and the labelling form), per-node health from the frame
summaries, and the labels with their export. Flask serves it, through waitress
(:func:`serve`); templates autoescape everything, so a node's text is shown as text.

Reading and labelling need no login when the desk listens on loopback. A ``token`` turns on HTTP
authentication (Basic, the user name is the reviewer; or ``Authorization: Bearer``) and is required
to listen anywhere else (:func:`check_bind`). Forms carry a per-process token against cross-site
posts, and every response forbids scripts, frames and foreign content.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ConfigError, EngineError, GroundStoreError
from edge.ground.catalog import SORTS, Catalog, RecordQuery
from edge.ground.images import asinh_stretch, heat, line_chart, png, upscale
from edge.ground.labels import ARTEFACT, Label, LabelStore, export_labels
from edge.log import get_logger
from edge.records import REASONS, DownlinkRecord

__all__ = ["ReviewSettings", "check_bind", "create_app", "run_until", "serve"]

log = get_logger(__name__)

#: each stamp pixel as this many screen pixels
ZOOM = 6
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class ReviewSettings:
    """What the desk serves: a ground folder, where engines are looked up, and its access token."""

    ground_dir: Path
    engines: tuple[Path, ...] = ()
    token: str = ""
    catch_up_every_s: float = 1.0
    explanations_kept: int = 64


def check_bind(host: str, token: str) -> None:
    """Refuse to listen beyond loopback without a token."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise ConfigError(f"the review desk listens on {host}, beyond this machine: give --token-file so that "
                          "only people with the token can read and label records", where="ground review")


class _Desk:
    """The state behind the pages: the catalog, the labels, and the explainers of each engine."""

    def __init__(self, settings: ReviewSettings) -> None:
        self.settings = settings
        self.catalog = Catalog(settings.ground_dir)
        self.labels = LabelStore(settings.ground_dir)
        self.csrf = secrets.token_urlsafe(24)
        self._caught_up = 0.0
        self._lock = threading.Lock()
        self._explainers: dict[str, Any] = {}
        self._explained: OrderedDict[str, Any] = OrderedDict()
        self.catalog.catch_up()

    def close(self) -> None:
        for explainer in self._explainers.values():
            explainer.close()
        self.catalog.close()
        self.labels.close()

    def fresh(self) -> None:
        if time.monotonic() - self._caught_up >= self.settings.catch_up_every_s:
            self.catalog.catch_up()
            self._caught_up = time.monotonic()

    def explain(self, record: DownlinkRecord) -> tuple[Any, str]:
        """(explanation or None, why there is none) of a record, computed once and kept."""
        from engines.explain import explainer_for

        if record.stamp is None:
            return None, "the record carries no stamp"
        with self._lock:
            if record.record_id in self._explained:
                self._explained.move_to_end(record.record_id)
                return self._explained[record.record_id], ""
            try:
                explainer = self._explainers.get(record.engine_id)
                if explainer is None:
                    explainer = self._explainers[record.engine_id] = explainer_for(record.engine_id,
                                                                                   self.settings.engines)
                explanation = explainer.explain(record.stamp.decompress())
            except EngineError as exc:
                log.warning("review.explain_failed", record_id=record.record_id, engine_id=record.engine_id,
                            error=str(exc))
                return None, str(exc)
            self._explained[record.record_id] = explanation
            while len(self._explained) > self.settings.explanations_kept:
                self._explained.popitem(last=False)
            return explanation, ""


def create_app(settings: ReviewSettings) -> Any:
    """The Flask application of the desk (its ``desk`` attribute holds the open files)."""
    from flask import (
        Flask,
        Response,
        abort,
        make_response,
        redirect,
        render_template,
        request,
        url_for,
    )

    here = Path(__file__).parent
    app = Flask(__name__, template_folder=str(here / "templates"), static_folder=str(here / "static"))
    desk = _Desk(settings)
    app.extensions["desk"] = desk
    app.jinja_env.globals.update(reasons=REASONS, sorts=sorted(SORTS), zoom=ZOOM)

    def reviewer() -> str:
        """The authenticated user's name, or '' when the desk has no token."""
        if not settings.token:
            return ""
        header = request.headers.get("Authorization", "")
        kind, _, value = header.partition(" ")
        if kind.lower() == "bearer" and hmac.compare_digest(value.strip(), settings.token):
            return "token"
        if kind.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return ""
            if hmac.compare_digest(password, settings.token):
                return user.strip() or "token"
        return ""

    @app.before_request
    def guard() -> Any:
        if settings.token and not reviewer():
            response = make_response("authentication required\n", 401)
            response.headers["WWW-Authenticate"] = 'Basic realm="astro-edge review", charset="UTF-8"'
            return response
        desk.fresh()
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers.update(_HEADERS)
        return response

    @app.get("/")
    def records() -> Any:
        args = request.args
        try:
            query = RecordQuery(node_id=args.get("node", ""), reason=args.get("reason", ""),
                                label=args.get("label", ""), since=args.get("since", ""), until=args.get("until", ""),
                                sort=args.get("sort", "priority"), page=int(args.get("page", "1") or 1),
                                per_page=int(args.get("per_page", "50") or 50))
        except (GroundStoreError, ValueError) as exc:
            abort(400, str(exc))
        rows, total = desk.catalog.query(query)
        labelled = desk.labels.latest([r.record_id for r in rows])
        pages = max(1, -(-total // query.per_page))
        keep = {k: v for k, v in args.items() if k != "page" and v}
        return render_template("list.html", rows=rows, total=total, query=query, pages=pages, keep=keep,
                               choices=desk.catalog.choices(), labelled=labelled)

    def _record_or_404(record_id: str) -> DownlinkRecord:
        record = desk.catalog.record(record_id)
        if record is None:
            abort(404, f"no record {record_id} in {settings.ground_dir}")
        return record

    @app.get("/record/<record_id>")
    def record_page(record_id: str) -> Any:
        record = _record_or_404(record_id)
        explanation, why_not = desk.explain(record)
        planes = record.stamp.shape[0] if record.stamp is not None else 0
        classes = list(record.probs)
        return render_template(
            "record.html", r=record, received=desk.catalog.received_time(record_id),
            summary=desk.catalog.summary(record.node_id, record.series_id, record.frame),
            ex=explanation, why_not=explanation is None and why_not, planes=planes,
            classes=classes, history=desk.labels.of(record_id), artefact=ARTEFACT, csrf=desk.csrf,
            reviewer=reviewer() or request.cookies.get("reviewer", ""), need_name=not reviewer(),
            sky=_sexagesimal(record.ra, record.dec), saved=request.args.get("saved", ""))

    @app.get("/record/<record_id>/plane/<int:plane>.png")
    def plane_png(record_id: str, plane: int) -> Any:
        record = _record_or_404(record_id)
        if record.stamp is None or not 0 <= plane < record.stamp.shape[0]:
            abort(404)
        data = record.stamp.decompress()[plane]
        pixels = (np.clip(data, 0, 1) * 255).astype(np.uint8) if plane % 2 else asinh_stretch(data)
        return _png(upscale(pixels, ZOOM))

    @app.get("/record/<record_id>/saliency.png")
    def saliency_png(record_id: str) -> Any:
        explanation, _ = desk.explain(_record_or_404(record_id))
        if explanation is None:
            abort(404)
        return _png(upscale(heat(explanation.saliency), ZOOM))

    @app.get("/record/<record_id>/exemplar/<int:i>.png")
    def exemplar_png(record_id: str, i: int) -> Any:
        explanation, _ = desk.explain(_record_or_404(record_id))
        if explanation is None or not 0 <= i < len(explanation.exemplars):
            abort(404)
        return _png(upscale(asinh_stretch(explanation.exemplars[i].stamp[0]), 3))

    @app.post("/record/<record_id>/label")
    def label(record_id: str) -> Any:
        form = request.form
        if not hmac.compare_digest(form.get("csrf", ""), desk.csrf):
            abort(403, "the form is stale or from another site: reload the record's page")
        record = _record_or_404(record_id)
        choice = form.get("choice", "")
        name = form.get("new_class", "").strip() if choice == "new" else choice
        who = reviewer() or form.get("reviewer", "").strip()
        try:
            if not name:
                raise ConfigError("choose a class, artefact, or give the new class's name", where="label")
            stored = desk.labels.add(Label(record.record_id, name, who,
                                           datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                           record.engine_id))
        except ConfigError as exc:
            abort(400, str(exc))
        response = redirect(url_for("record_page", record_id=record_id, saved=stored.label), code=303)
        if not reviewer():
            response.set_cookie("reviewer", who, samesite="Strict", httponly=True)
        return response

    @app.get("/health")
    def health() -> Any:
        charts = {}
        for node, h in desk.catalog.health().items():
            series = {reason: h["sent_by_reason"][reason] for reason in REASONS}
            charts[node] = (h, line_chart(h["times"], series, title=f"sent by reason, {node}"),
                            line_chart(h["times"], {"frames": h["frames_per_bin"], "dropped": h["dropped_per_bin"]},
                                       title=f"frames summarised and dropped, {node}"))
        return render_template("health.html", charts=charts)

    @app.get("/labels")
    def labels_page() -> Any:
        return render_template("labels.html", labels=desk.labels.current())

    @app.get("/labels/export.npz")
    def labels_export() -> Any:
        # the download is the command's file, written aside (the ground's folder gets nothing new)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "labels.npz"
            try:
                export_labels(desk.labels, desk.catalog, out, engine_id=request.args.get("engine_id", ""))
            except ConfigError as exc:
                abort(400, str(exc))
            response = make_response(out.read_bytes())
        response.headers["Content-Type"] = "application/octet-stream"
        response.headers["Content-Disposition"] = "attachment; filename=labels.npz"
        return response

    def _png(data: np.ndarray) -> Any:
        response = make_response(png(data))
        response.headers["Content-Type"] = "image/png"
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    return app


def _sexagesimal(ra: float | None, dec: float | None) -> str:
    """hh:mm:ss.ss +dd:mm:ss.s of a position in degrees ('' without one)."""
    if ra is None or dec is None:
        return ""
    h = (ra % 360.0) / 15.0
    hh, mm = int(h), int((h % 1) * 60)
    ss = ((h * 60) % 1) * 60
    sign = "-" if dec < 0 else "+"
    d = abs(dec)
    dd, dm = int(d), int((d % 1) * 60)
    ds = ((d * 60) % 1) * 60
    return f"{hh:02d}:{mm:02d}:{ss:05.2f} {sign}{dd:02d}:{dm:02d}:{ds:04.1f}"


def serve(app: Any, host: str, port: int, *, threads: int = 4) -> Any:
    """A waitress server of the app on host:port (0: any free port), bound but not yet serving:
    :func:`run_until` serves it; ``effective_port`` says where it listens."""
    from waitress import create_server

    return create_server(app, host=host, port=port, threads=threads, ident="astro-edge review")


def run_until(server: Any, stop: Callable[[], bool], poll_s: float = 0.2) -> None:
    """Serve until ``stop()`` is true, then close every socket and the request threads, all in
    this thread (waitress's own ``close()`` from another thread races its select loop)."""
    from waitress import wasyncore

    try:
        while not stop():
            wasyncore.loop(timeout=poll_s, map=server._map, count=1)
    finally:
        server.task_dispatcher.shutdown()
        wasyncore.close_all(server._map)

