"""The issue-18 workbook on data it was not shaped for: no deals at all, no deal to act on, another
currency, hostile record URLs and names."""

from __future__ import annotations

import zipfile

import openpyxl
import pandas as pd

from config.workbook import SummaryData
from connectors.workbook.xlsx_writer import write_workbook
from tests.analytics_support import make_cfg, make_history, run
from transforms.analytics import build_analytics
from transforms.canonical import empty_opportunities


def _write(a, path, currency="USD"):
    write_workbook(path, sheets=a.sheets, summary=a.summary, currency=currency)
    return openpyxl.load_workbook(path)


def test_no_deals_at_all(tmp_path) -> None:
    a = build_analytics(empty_opportunities(), make_history([]), make_cfg(), pd.Timestamp("2026-06-15").date())
    assert a.actions.empty
    wb = _write(a, tmp_path / "empty.xlsx")
    assert [c.value for c in wb["Actions"][1]][-1] == "record_url" and wb["Actions"].max_row <= 2
    with zipfile.ZipFile(tmp_path / "empty.xlsx") as z:
        names = z.namelist()
        rels = [z.read(n).decode() for n in names if n.startswith("xl/worksheets/_rels/")]
        assert not any("hyperlink" in r for r in rels)  # no sample link left behind
    summary = [c.value for row in wb["Summary"].iter_rows() for c in row if isinstance(c.value, str)]
    assert "No open deal has a flag to act on." in summary
    assert "0 open deals worth $0; 0 to act on (Actions sheet). 0 won and 0 lost deals in the data." in summary


def test_another_currency_and_hostile_text(tmp_path) -> None:
    rows = [
        dict(opportunity_id="=1+1", name='=HYPERLINK("http://evil.example","x")', owner="@cmd", stage="Proposal",
             amount=250_000, created_date="2026-05-01", close_date="2026-05-10",
             record_url="javascript:alert(1)"),
        dict(opportunity_id="b", name="Fine", owner="ann", stage="Proposal", amount=900, created_date="2026-05-01",
             close_date="2026-05-11", record_url="https://crm.example.com/b"),
    ]
    a = run(rows, "2026-06-15", make_cfg(inputs={"currency": "EUR"}))
    assert a.summary.kpis.set_index("metric").loc["sales_velocity_per_day", "label"] == "Sales velocity (€/day)"
    wb = _write(a, tmp_path / "eur.xlsx", "EUR")
    ws = wb["Actions"]
    first, second = ws[2], ws[3]
    assert [c.value for c in first[:4]] == ["high", "=1+1", '=HYPERLINK("http://evil.example","x")', "@cmd"]
    assert all(c.data_type == "s" for c in first[:4])  # text stays text
    assert first[5].number_format == '"€"#,##0' and second[5].number_format == '"€"#,##0'
    assert first[10].value == "javascript:alert(1)" and first[10].hyperlink is None
    assert second[10].hyperlink.target == "https://crm.example.com/b"
    top = [c for row in wb["Summary"].iter_rows() for c in row if c.value == '=HYPERLINK("http://evil.example","x")']
    assert len(top) == 1 and top[0].data_type == "s" and top[0].hyperlink is None


def test_placeholder_summary_still_renders(tmp_path) -> None:
    """The summary the pipeline writes without analytics: kpis and counts, no tables given."""
    data = SummaryData("Pipeline", pd.DataFrame({"metric": ["rows loaded"], "value": [3.0], "unit": ["count"]}),
                       pd.DataFrame({"rule": pd.Series(dtype=object), "count": pd.Series(dtype=int)}))
    write_workbook(tmp_path / "p.xlsx", sheets=[], summary=data)
    ws = openpyxl.load_workbook(tmp_path / "p.xlsx")["Summary"]
    cells = {c.value: c for row in ws.iter_rows() for c in row if c.value is not None}
    assert cells[3.0].number_format == "#,##0" and "rows loaded" in cells


def test_summary_text_with_overlapping_escapes_reads_back_exact(tmp_path) -> None:
    """xlsxwriter escapes only the first of overlapping `_xHHHH_` runs; the Summary's strings are fixed."""
    import re

    from connectors.sources.xlsx_guard import decode_text

    name = "_x005F_x0041_ and _x0041_x0042_"
    a = run([dict(opportunity_id="a", name=name, owner="ann", stage="Proposal", amount=1_000,
                  created_date="2026-05-01", close_date="2026-05-10")], "2026-06-15")
    write_workbook(tmp_path / "x.xlsx", sheets=a.sheets, summary=a.summary)
    with zipfile.ZipFile(tmp_path / "x.xlsx") as z:
        texts = {decode_text(t) for n in z.namelist() if n.endswith(".xml")
                 for t in re.findall(rb"<t\b[^>]*>(.*?)</t>", z.read(n), re.S) if b"x0041" in t}
    assert texts == {name}  # Summary (shared strings), Actions, Flags (inline): one text
