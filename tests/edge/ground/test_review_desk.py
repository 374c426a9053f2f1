"""The review desk in a real browser: list, filter, open a record, see its cut-out and explanation,
label it, export; text from the node shown as text; a token beyond loopback."""

from __future__ import annotations

import base64
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.errors import ConfigError
from edge.ground.labels import LabelStore
from edge.ground.review import check_bind
from tests.edge.ground.conftest import submitted

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _natural_width(browser: Any, element_id: str) -> int:
    from selenium.webdriver.common.by import By

    image = browser.find_element(By.ID, element_id)
    return int(browser.execute_script("return arguments[0].complete ? arguments[0].naturalWidth : 0;", image))


def _shots(tmp_path: Path) -> Path:
    """Where screenshots go: ASTRO_EDGE_SCREENSHOTS (docs/img refreshes them) or the test's folder."""
    return Path(os.environ.get("ASTRO_EDGE_SCREENSHOTS") or tmp_path)


def test_a_reviewer_lists_filters_opens_labels_and_exports_in_a_browser(demo_ground: Path, browser: Any, desk: Any,
                                                                       tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """In headless Chromium: the list shows the demo's records, the reason filter and the p-value sort
    hold, a record's page shows its cut-out, mask, context, saliency and the members' votes, a label
    saved there is listed, and the export holds its stamp."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from edge.cli import main

    with desk(demo_ground) as url:
        browser.get(url + "/")
        total = int(browser.find_element(By.ID, "total").text)
        rows = browser.find_elements(By.CSS_SELECTOR, "#records tbody tr")
        assert total > 20 and len(rows) == min(total, 50)
        browser.save_screenshot(str(_shots(tmp_path) / "review_list.png"))

        Select(browser.find_element(By.ID, "f-reason")).select_by_value("unusual")
        Select(browser.find_element(By.ID, "f-sort")).select_by_value("pvalue")
        submitted(browser, "f-apply", "total")
        unusual = int(browser.find_element(By.ID, "total").text)
        reasons = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#records td.reasons")]
        assert 0 < unusual < total and all("unusual" in r for r in reasons)
        pvalues = [float(tr.find_elements(By.TAG_NAME, "td")[8].text)
                   for tr in browser.find_elements(By.CSS_SELECTOR, "#records tbody tr")]
        assert pvalues == sorted(pvalues)

        record_id = browser.find_element(By.CSS_SELECTOR, "a.record-link").text
        assert submitted(browser, (By.CSS_SELECTOR, "a.record-link"), "record-id").text == record_id
        assert "unusual" in browser.find_element(By.ID, "reasons").text
        for image in ("cutout", "mask", "context", "saliency"):
            assert _natural_width(browser, image) == 32 * 6, image
        explanation = browser.find_element(By.ID, "explanation").text
        assert "Members' votes" in explanation and "Nearest class prototypes" in explanation
        browser.save_screenshot(str(_shots(tmp_path) / "review_record.png"))

        Select(browser.find_element(By.ID, "choice")).select_by_value("new")
        browser.find_element(By.ID, "new-class").send_keys("satellite_glint")
        browser.find_element(By.ID, "reviewer").send_keys("ana")
        assert "satellite_glint" in submitted(browser, "label-save", "saved").text
        assert "satellite_glint by ana" in browser.find_element(By.ID, "labelling").text

        assert submitted(browser, (By.LINK_TEXT, "labels"), "n-labels").text == "1"
        assert record_id in browser.find_element(By.ID, "labels").text

    out = tmp_path / "labels.npz"
    assert main(["ground", "labels", "export", "--ground", str(demo_ground), "--out", str(out)]) == 0
    assert "1 labelled stamps" in capsys.readouterr().out
    with np.load(out) as data:
        assert list(data["label"]) == ["satellite_glint"] and data["stamps"].shape == (1, 4, 32, 32)
    with LabelStore(demo_ground) as store:
        assert [(lab.record_id, lab.reviewer) for lab in store.current()] == [(record_id, "ana")]


def test_html_that_came_from_the_node_is_shown_as_text(tmp_path: Path, browser: Any, desk: Any) -> None:
    """A record whose detector id and class hold markup shows that markup as text in the list and on
    its page, runs nothing, and a reviewer's name with markup stays text in the label history."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from tests.edge.ground.test_review_store import make_record, write_ground

    hostile = '<script>document.title="owned"</script><img src=x id="injected">'
    record = make_record("n1", 0, 0, np.random.default_rng(1), detector=hostile, label="<b id='bold'>star</b>")
    write_ground(tmp_path, [record])
    with desk(tmp_path) as url:
        browser.get(url + "/")
        browser.delete_all_cookies()
        assert hostile in browser.find_element(By.ID, "records").text
        assert "<b id='bold'>star</b>" in browser.find_element(By.ID, "records").text
        browser.get(url + "/record/" + urllib.parse.quote(record.record_id, safe=""))
        assert browser.find_element(By.ID, "detector").text == hostile
        assert browser.find_element(By.ID, "class").text == "<b id='bold'>star</b>"
        # the record's engine is not among the engines the desk knows: said, not hidden
        assert "No explanation" in browser.find_element(By.ID, "explanation").text
        Select(browser.find_element(By.ID, "choice")).select_by_value("artefact")
        name = browser.find_element(By.ID, "reviewer")
        name.clear()
        name.send_keys("<i id='italic'>eve</i>")
        submitted(browser, "label-save", "saved")
        assert "artefact by <i id='italic'>eve</i>" in browser.find_element(By.ID, "labelling").text
        for element_id in ("injected", "bold", "italic"):
            assert browser.find_elements(By.ID, element_id) == []
        assert browser.title != "owned"


def test_beyond_loopback_the_desk_needs_a_token_and_names_the_reviewer_from_it(tmp_path: Path, desk: Any) -> None:
    """Without a token the desk refuses to listen beyond loopback; with one, requests without it get
    401, Basic auth with it gets the page, and a label records the user name as the reviewer."""
    from tests.edge.ground.test_review_store import make_record, write_ground

    with pytest.raises(ConfigError, match="token"):
        check_bind("0.0.0.0", "")
    check_bind("127.0.0.1", "")
    check_bind("::1", "")
    record = make_record("n1", 0, 0, np.random.default_rng(2))
    write_ground(tmp_path, [record])
    token = "s3cret-token-for-the-desk"
    with desk(tmp_path, token=token) as url:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/", timeout=10)
        refused.value.close()
        assert refused.value.code == 401 and "Basic" in refused.value.headers["WWW-Authenticate"]
        auth = {"Authorization": "Basic " + base64.b64encode(f"ben:{token}".encode()).decode()}
        page_url = url + "/record/" + urllib.parse.quote(record.record_id, safe="")
        with urllib.request.urlopen(urllib.request.Request(page_url, headers=auth), timeout=30) as page:
            html = page.read().decode()
            assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
        body = urllib.parse.urlencode({"csrf": csrf, "choice": "star"}).encode()
        post = urllib.request.Request(page_url + "/label", data=body, headers=auth, method="POST")
        with urllib.request.urlopen(post, timeout=30) as done:
            assert done.status == 200
        forged = urllib.request.Request(page_url + "/label", data=urllib.parse.urlencode(
            {"csrf": "guess", "choice": "star"}).encode(), headers=auth, method="POST")
        with pytest.raises(urllib.error.HTTPError) as stale:
            urllib.request.urlopen(forged, timeout=10)
        stale.value.close()
        assert stale.value.code == 403
    with LabelStore(tmp_path) as store:
        assert [(lab.label, lab.reviewer) for lab in store.current()] == [("star", "ben")]


def test_explain_prints_the_explanation_of_a_stored_record(demo_ground: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`astro-edge explain` finds the record's engine among the shipped ones and prints its members'
    votes, prototypes, nearest training examples and a 32 x 32 saliency map as JSON; an unknown
    record id exits 2 and names it."""
    import json

    from edge.cli import main
    from edge.ground.catalog import Catalog, RecordQuery

    with Catalog(demo_ground) as catalog:
        catalog.catch_up()
        record_id = catalog.query(RecordQuery(reason="unusual", per_page=1))[0][0].record_id
    assert main(["explain", record_id, "--ground", str(demo_ground)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["record_id"] == record_id and "unusual" in out["reasons"]
    assert len(out["member_votes"]) == 4 and out["predicted"] in out["classes"]
    assert np.asarray(out["saliency"]).shape == (32, 32)
    assert out["exemplars"] and "stamp" not in out["exemplars"][0]
    assert main(["explain", "no-such-record", "--ground", str(demo_ground)]) == 2
    assert "no-such-record" in capsys.readouterr().err
