"""The Actions sheet (docs/metrics.md "Deals to act on"): a hand case read back cell by cell from the
written workbook, its order, its links (hyperlinks, HYPERLINK() past Excel's limit, hostile URLs)."""

from __future__ import annotations

import re
import zipfile
from datetime import datetime

import numpy as np
import openpyxl
import pandas as pd
import pytest

from config.loader import ConfigError, load_config
from config.workbook import SheetData
from connectors.workbook.xlsx_writer import MAX_LINKS, link_plan, write_workbook
from tests.analytics_support import make_cfg, run
from transforms.actions import ACTION_COLUMNS, fill_record_urls, record_url_template

AS_OF = "2026-06-15"
TEMPLATE = "https://crm.example.com/deals/{opportunity_id}"
YES = dict(budget=True, authority=True, need=True, timeline=True)
BASE = dict(created_date="2026-03-01", last_activity_date="2026-06-12", product="P")
ROWS = [
    # A: past its close date (high), 50,000
    dict(opportunity_id="A", name="Acme renewal", owner="ann", stage="Proposal", amount=50_000, close_date="2026-05-10",
         stage_entered_date="2026-06-01", next_step_date="2026-06-20", **YES, **BASE),
    # B: stalled in Contact and idle (medium, low), 80,000, its own record_url from the source
    dict(opportunity_id="B", name="Beta rollout", owner="bob", stage="Contact", amount=80_000, close_date="2026-07-30",
         stage_entered_date="2026-05-01", record_url="https://my.crm/opp/B?x=1&y=2", **YES,
         **{**BASE, "last_activity_date": "2026-05-01"}),
    # C: no owner and no amount (medium), in Qualification (not checked for BANT)
    dict(opportunity_id="C", name="Cold lead", stage="Qualification", close_date="2026-08-15",
         stage_entered_date="2026-06-10", **BASE),
    # D: past its close date (high), 20,000
    dict(opportunity_id="D", name="Delta pilot", owner="cy", stage="Proposal", amount=20_000, close_date="2026-06-01",
         stage_entered_date="2026-06-01", **YES, **BASE),
    # E: healthy: not on Actions
    dict(opportunity_id="E", name="Echo", owner="ann", stage="Lead generation", amount=9_000, close_date="2026-08-01",
         stage_entered_date="2026-06-10", **BASE),
    # F: won in the period (a 92-day cycle: aged would need 184 days)
    dict(opportunity_id="F", name="Foxtrot", owner="bob", stage="Won", amount=30_000, created_date="2026-03-01",
         close_date="2026-06-01", product="P"),
    # G: follow-up 5 days late and BANT 2 of 4 in Closing (medium), 5,000
    dict(opportunity_id="G", name="Golf upsell", owner="cy", stage="Closing", amount=5_000, close_date="2026-07-01",
         stage_entered_date="2026-06-05", next_step_date="2026-06-10", budget=True, need=True, **BASE),
]
EXPECTED = [  # severity, id, name, owner, stage, amount, close date, days in stage, flags, next step, link
    ("high", "A", "Acme renewal", "ann", "Proposal", 50_000, datetime(2026, 5, 10), 14, "Past its close date by 36 days",
     "Close date 2026-05-10 passed 36 days ago: set a new date or close it lost.", "https://crm.example.com/deals/A"),
    ("high", "D", "Delta pilot", "cy", "Proposal", 20_000, datetime(2026, 6, 1), 14, "Past its close date by 14 days",
     "Close date 2026-06-01 passed 14 days ago: set a new date or close it lost.", "https://crm.example.com/deals/D"),
    ("medium", "B", "Beta rollout", "bob", "Contact", 80_000, datetime(2026, 7, 30), 45,
     "45 days in Contact (limit 21); no activity for 45 days",
     "45 days in Contact (limit 21): agree the step that moves it forward, or close it lost.",
     "https://my.crm/opp/B?x=1&y=2"),
    ("medium", "G", "Golf upsell", "cy", "Closing", 5_000, datetime(2026, 7, 1), 10,
     "Follow-up 5 days overdue; BANT 2 of 4 (minimum 3)",
     "Follow-up promised for 2026-06-10 is 5 days late: do it now or agree a new date with the buyer.",
     "https://crm.example.com/deals/G"),
    ("medium", "C", "Cold lead", None, "Qualification", None, datetime(2026, 8, 15), 5, "No amount, owner",
     "Assign an owner: nobody is responsible for this deal (also fill in the amount).", "https://crm.example.com/deals/C"),
]


def _cfg():
    return make_cfg(sources=[{"type": "csv", "name": "crm", "path": "x.csv", "record_url_template": TEMPLATE}])


@pytest.fixture(scope="module")
def analytics():
    return run(ROWS, AS_OF, _cfg())


def test_actions_frame_is_the_hand_case(analytics) -> None:
    frame = analytics.actions
    assert list(frame.columns) == ACTION_COLUMNS
    got = [tuple(None if pd.isna(v) else v for v in row) for row in frame.itertuples(index=False)]
    want = [(s, i, n, o, st, None if a is None else float(a), pd.Timestamp(c), float(d), f, ns, u)
            for s, i, n, o, st, a, c, d, f, ns, u in EXPECTED]
    assert got == want


def test_actions_sheet_read_back_cell_by_cell(analytics, tmp_path) -> None:
    path = tmp_path / "book.xlsx"
    write_workbook(path, sheets=analytics.sheets, summary=analytics.summary)
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames[:3] == ["Summary", "Actions", "Flags"]
    ws = wb["Actions"]
    assert [c.value for c in ws[1]] == ACTION_COLUMNS
    col = {h: i for i, h in enumerate(ACTION_COLUMNS)}
    for r, exp in enumerate(EXPECTED, start=2):
        cells = ws[r]
        assert tuple(c.value for c in cells) == exp, r
        if exp[col["amount"]] is not None:  # a missing amount is an empty cell
            assert cells[col["amount"]].number_format == '"$"#,##0'
        assert cells[col["close_date"]].is_date and cells[col["close_date"]].number_format == "yyyy-mm-dd"
        link = cells[col["record_url"]]
        assert link.hyperlink is not None and link.hyperlink.target == exp[-1]
    assert ws.max_row == len(EXPECTED) + 1
    assert ws.tables["tblActions"].ref == f"A1:K{len(EXPECTED) + 1}"


def test_flags_carry_the_deal(analytics) -> None:
    f = analytics.flags
    past = f[(f["check"] == "past_due")].reset_index(drop=True)
    assert past[["opportunity_id", "name", "owner", "stage", "amount", "mistake"]].values.tolist() == [
        ["A", "Acme renewal", "ann", "Proposal", 50_000.0, "Clinging to dead deals"],  # largest amount first
        ["D", "Delta pilot", "cy", "Proposal", 20_000.0, "Clinging to dead deals"]]
    team = f[f["scope"] != "deal"]
    assert team["owner"].isna().all() and team["amount"].isna().all()


def test_top_deals_on_the_summary_are_the_first_actions(analytics) -> None:
    top = next(t for t in analytics.summary.tables if t.title == "Top deals at risk")
    assert top.frame["Deal"].tolist() == ["Acme renewal", "Delta pilot", "Beta rollout", "Golf upsell", "Cold lead"]
    assert top.frame["Next step"].iloc[0] == EXPECTED[0][9]
    assert top.links == {"Deal": "_url"}


def test_record_url_templates(tmp_path) -> None:
    assert record_url_template(_cfg().sources[0]) == TEMPLATE
    sf = make_cfg(sources=[{"type": "salesforce", "name": "sf", "domain": "https://acme.my.salesforce.com",
                            "client_id": "x", "client_secret": "y"}]).sources[0]
    assert record_url_template(sf) == "https://acme.my.salesforce.com/lightning/r/Opportunity/{opportunity_id}/view"
    from tests.analytics_support import make_opps

    opps = make_opps([dict(opportunity_id="a b/ü", stage="Proposal", created_date="2026-01-01"),
                      dict(opportunity_id="x", stage="Proposal", created_date="2026-01-01", record_url="https://given/x")])
    urls = fill_record_urls(opps, _cfg())
    assert urls.tolist() == ["https://crm.example.com/deals/a%20b%2F%C3%BC", "https://given/x"]
    assert fill_record_urls(opps, make_cfg()) is None  # no template: the column stays as the source gave it


@pytest.mark.parametrize("template, problem", [
    ("https://crm/{deal}", "{deal} is not a canonical field"),
    ("crm.example.com/{opportunity_id}", "must start with https://"),
    ("https://crm/{opportunity_id", "is not a template"),
])
def test_bad_record_url_template_is_a_config_error(tmp_path, template, problem) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sources: [{name: s, type: csv, path: d.csv, record_url_template: '" + template + "'}]\n"
                   "destinations: [{type: file, path: o.xlsx}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert "record_url_template" in str(err.value) and problem in str(err.value)


@pytest.mark.parametrize("url, kind", [
    ("https://crm.example.com/deals/1", 1),
    ("http://crm.example.com/deals/1", 1),
    ("javascript:alert(1)", 0),
    ("file:///etc/passwd", 0),
    ('https://x.example/"onmouseover=1', 0),
    ("https://x.example/a b", 0),
    ("https://x.example/" + "a" * 3000, 0),
    (None, 0),
])
def test_only_plain_http_urls_become_links(url, kind) -> None:
    assert link_plan(pd.Series([url], dtype=object)).tolist() == [kind]


@pytest.mark.parametrize("repeats", [1, 3])  # 1: every URL its own (checked row by row), 3: each thrice
def test_link_plan_counts_links_in_row_order_past_the_limit(repeats) -> None:
    rng = np.random.default_rng(repeats)
    n = MAX_LINKS // repeats + 4_000
    urls: list[object] = [f"https://crm.example.com/deals/{i}" for i in range(n)]
    for i in rng.choice(n, 300, replace=False).tolist():
        urls[i] = rng.choice(np.array([None, np.nan, "javascript:alert(1)", "https://x.example/a b", "",
                                       "https://crm.example.com/" + "x" * 300], dtype=object))
    values = pd.Series([u for u in urls for _ in range(repeats)], dtype=object)
    is_url = [isinstance(u, str) and u.startswith("https://crm.") for u in values.tolist()]
    expected, linked = [], 0
    for u, ok in zip(values.tolist(), is_url, strict=True):
        linked += ok
        expected.append(0 if not ok else 1 if linked <= MAX_LINKS else 2 if len(u) <= 255 else 0)
    plan = link_plan(values)
    assert plan.tolist() == expected
    assert int((plan == 1).sum()) == MAX_LINKS and int((plan == 2).sum()) > 0


def test_past_excel_hyperlink_limit_links_are_formulas_with_cached_values(tmp_path) -> None:
    """Read from the package parts (openpyxl takes minutes to load 65,530 hyperlinks) and in read-only mode."""
    n = MAX_LINKS + 12
    urls = [f"https://crm.example.com/deals/{i}" + ("?a=1&b=2" if i == n - 1 else "") for i in range(n)]
    urls[n - 2] = "https://crm.example.com/" + "x" * 300  # too long for a formula's text: stays text
    path = tmp_path / "links.xlsx"
    write_workbook(path, sheets=[SheetData("Actions", pd.DataFrame({"record_url": urls}), {"record_url": "url"})])
    with zipfile.ZipFile(path) as z:
        rels = dict(re.findall(r'Id="(rIdL\d+)" Type="[^"]+/hyperlink" Target="([^"]+)"',
                               z.read("xl/worksheets/_rels/sheet1.xml.rels").decode()))
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
    assert "example.invalid" not in "".join(rels.values())  # the layout's sample link is gone
    links = re.findall(r'<hyperlink ref="A(\d+)" r:id="(rIdL\d+)"/>', sheet)
    assert len(links) == len(rels) == MAX_LINKS
    assert {int(r): rels[i] for r, i in links} == {r: urls[r - 2] for r in range(2, MAX_LINKS + 2)}
    formulas = re.findall(r"<f>(HYPERLINK\(.*?\))</f>", sheet)
    assert len(formulas) == 11  # rows MAX_LINKS + 2 .. n + 1, less the one too long
    values = [r[0] for r in openpyxl.load_workbook(path, read_only=True)["Actions"].iter_rows(
        min_row=MAX_LINKS + 2, values_only=True)]
    assert values[0] == f'=HYPERLINK("{urls[MAX_LINKS]}")'
    assert values[-2:] == [urls[n - 2], f'=HYPERLINK("https://crm.example.com/deals/{n - 1}?a=1&b=2")']
    cached = [r[0] for r in openpyxl.load_workbook(path, data_only=True, read_only=True)["Actions"].iter_rows(
        min_row=n + 1, values_only=True)]
    assert cached == [urls[n - 1]]  # viewers that do not recalculate show the URL
