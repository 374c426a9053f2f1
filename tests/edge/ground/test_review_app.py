"""The review desk's pages and forms through Flask's test client (the browser tests are slow)."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from edge.ground.labels import LabelStore
from edge.ground.review import ReviewSettings, create_app
from tests.edge.ground.test_images import read_png
from tests.edge.ground.test_review_store import make_record, make_summary, write_ground


@pytest.fixture
def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    records = [make_record(node, f, i, rng, label="streak" if i % 2 else "star")
               for node in ("n1", "n2") for f in range(3) for i in range(10)]
    write_ground(tmp_path, records, [make_summary(node, f, 10) for node in ("n1", "n2") for f in range(3)])
    app = create_app(ReviewSettings(tmp_path, engines=(tmp_path / "no-engines",), catch_up_every_s=0.0))
    app.testing = True
    yield app.test_client(), records
    app.extensions["desk"].close()


def _page(client, path: str) -> str:  # type: ignore[no-untyped-def]
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return response.get_data(as_text=True)


def test_every_page_renders_and_the_list_follows_its_filters(client) -> None:  # type: ignore[no-untyped-def]
    """The list, a record, its stamp planes, node health and labels answer; a filter keeps only its records."""
    c, records = client
    html = _page(c, "/")
    assert '<span id="total">60</span>' in html and html.count('class="record-link"') == 50
    html = _page(c, "/?node=n2&label=streak&sort=pvalue")
    assert '<span id="total">15</span>' in html and "n1:" not in html
    assert 'id="next"' not in html and 'href="/?' not in html.split('id="records"')[1].split("</table>")[0]
    page2 = _page(c, "/?page=2")
    assert page2.count('class="record-link"') == 10 and 'id="prev"' in page2
    quoted = urllib.parse.quote(records[3].record_id, safe="")
    record = _page(c, f"/record/{quoted}")
    assert records[3].record_id in record and "No explanation" in record and "no-engines" in record
    for plane in range(4):
        png = c.get(f"/record/{quoted}/plane/{plane}.png")
        assert png.status_code == 200 and read_png(png.data).shape == (32 * 6, 32 * 6)
    health = _page(c, "/health")
    assert health.count("<svg") == 4 and "3 frames summarised" in health
    assert "0 labelled records" in _page(c, "/labels").replace('<span id="n-labels">0</span>', "0")


def test_bad_requests_get_their_reason_and_nothing_is_stored(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A bad sort is 400, an unknown record 404, a post without the form's token 403, and a label
    that is not a word 400; none of them stores a label."""
    c, records = client
    assert c.get("/?sort=colour").status_code == 400
    assert c.get("/record/none").status_code == 404
    assert c.get("/record/none/plane/0.png").status_code == 404
    quoted = urllib.parse.quote(records[0].record_id, safe="")
    csrf = re.search(r'name="csrf" value="([^"]+)"', _page(c, f"/record/{quoted}")).group(1)
    assert c.post(f"/record/{quoted}/label", data={"choice": "star", "reviewer": "ana"}).status_code == 403
    bad = c.post(f"/record/{quoted}/label", data={"csrf": csrf, "choice": "new", "new_class": "<b>", "reviewer": "a"})
    assert bad.status_code == 400 and "letters" in bad.get_data(as_text=True)
    assert c.post(f"/record/{quoted}/label", data={"csrf": csrf, "choice": "", "reviewer": "a"}).status_code == 400
    assert c.post(f"/record/{quoted}/label", data={"csrf": csrf, "choice": "star"}).status_code == 400
    with LabelStore(tmp_path) as store:
        assert store.current() == []
    done = c.post(f"/record/{quoted}/label", data={"csrf": csrf, "choice": "artefact", "reviewer": "ana"})
    assert done.status_code == 303 and "saved=artefact" in done.headers["Location"]
    assert "artefact by ana" in _page(c, f"/record/{quoted}")
    assert "artefact" in _page(c, "/")
    export = c.get("/labels/export.npz")
    assert export.status_code == 200 and export.data[:2] == b"PK"


def test_every_response_forbids_scripts_frames_and_foreign_content(client) -> None:  # type: ignore[no-untyped-def]
    """Pages and pictures carry the Content-Security-Policy and the no-sniff header."""
    c, _ = client
    for path in ("/", "/health", "/labels", "/static/review.css"):
        response = c.get(path)
        assert "script-src" not in response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        response.close()
