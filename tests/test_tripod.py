"""The TRIPOD+AI checklist of the nomogram report (converters/tripod.py): every pointer it writes resolves in
the report it was written into (an id of report.html, a key of report.json, a heading of a doc file), the
html and json carry the same table, and the checker itself catches a pointer that does not resolve."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from converters import nomogram as nm
from converters import tripod

sys.path.insert(0, str(Path(__file__).parent))
from nomogram_fixture import make_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the items this kind of report must cover (methods and results), answered or with a reason
REQUIRED = {"5a", "5b", "6a", "6b", "7", "8a", "9a", "9b", "10", "11", "12a", "12b", "12c", "12d", "12e", "12f",
            "12g", "13", "14", "15", "16", "17", "18f", "20a", "20b", "21", "22", "23a", "23b", "24"}


@pytest.fixture(scope="module", params=[10, 0], ids=["bootstrap", "no-bootstrap"])
def written(request, tmp_path_factory):
    _, run = make_run(tmp_path_factory.mktemp("tripod"), n_oa=40, n_noa=60, n_controls=5, seed=4)
    nm.analyse(run, bootstrap=request.param, seed=1)
    return (json.loads((run / "report.json").read_text()), (run / "report.html").read_text(), request.param)


def test_every_pointer_resolves_in_the_written_report(written):
    report, html, _ = written
    check = report["tripod_ai"]
    assert tripod.unresolved(check, report, html, ROOT) == []
    assert REQUIRED <= {i["item"] for i in check["items"]}
    for item in check["items"]:
        assert item["status"] in ("answered", "not answered", "not applicable"), item
        assert item["where"] or item["status"] != "answered", f"{item['item']} answered but points nowhere"
        assert item["where"] or item["note"], f"{item['item']}: no pointer and no reason"
    kinds = {p["kind"] for i in check["items"] for p in i["where"]}
    assert kinds == {"html", "json", "doc"}


def test_the_html_table_is_the_json_checklist(written):
    report, html, _ = written
    section = html[html.index("id='tripod'"):]
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td><td>([^<]+)</td>", section)
    assert len(rows) == len(report["tripod_ai"]["items"])
    for (item, topic, status), want in zip(rows, report["tripod_ai"]["items"], strict=True):
        assert (item, status) == (want["item"], want["status"]) and topic.startswith(want["topic"].split(":")[0])
    for p in (p for i in report["tripod_ai"]["items"] for p in i["where"] if p["kind"] == "html"):
        assert f"<a href='{p['ref']}'>" in section


def test_without_a_bootstrap_calibration_is_not_answered_and_says_why(written):
    report, _, boot = written
    cal = next(i for i in report["tripod_ai"]["items"] if i["topic"] == "Results: calibration")
    if boot:
        assert cal["status"] == "answered" and {"kind": "json", "ref": "validation.calibration"} in cal["where"]
    else:
        assert report["validation"] is None
        assert cal["status"] == "not answered" and cal["where"] == [] and "--bootstrap 0" in cal["note"]


def test_the_checker_catches_a_pointer_that_does_not_resolve(written):
    report, html, _ = written
    check = report["tripod_ai"]
    assert any("html #flow" in b for b in tripod.unresolved(check, report, html.replace("id='flow'", ""), ROOT))
    broken = {k: v for k, v in report.items() if k != "table1"}
    assert any("json table1" in b for b in tripod.unresolved(check, broken, html, ROOT))
    bad_doc = {"items": [{"item": "x", "topic": "t", "where": [{"kind": "doc", "ref": "docs/NOMOGRAM.md#no-such"}]}]}
    assert tripod.unresolved(bad_doc, report, html, ROOT) == ["x t: doc docs/NOMOGRAM.md#no-such"]
    assert tripod.slug("Threshold rules (`--threshold`, converters/operating_point.py)") == \
        "threshold-rules---threshold-convertersoperating_pointpy"
