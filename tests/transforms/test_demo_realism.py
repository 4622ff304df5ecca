"""The bundled demo looks like a working sales team on any date (issue 18): roughly 10-25% of the
open deals have something to act on, stage ages mostly inside their limits, a balanced funnel,
both sources fresh (nothing stale), and the formula-looking names only on closed deals."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from flows.pipeline import extract_all, prepare, transform
from tests.flows.test_cli_demo import demo_config
from transforms.demo_data import INJECTIONS, STAGE_LIMITS, generate_demo, generate_partner_deals


@pytest.fixture(scope="module", params=["2026-06-30", "2025-11-14"])  # anchored: any date looks alike
def demo(request, tmp_path_factory):
    as_of = date.fromisoformat(request.param)
    tmp = tmp_path_factory.mktemp("demo")
    cfg = demo_config(tmp, str(tmp / "out.xlsx"), as_of=as_of)
    run = prepare(cfg, as_of)
    extracted, failures = extract_all(run)
    return transform(run, extracted, failures)


def test_flagged_share_is_realistic(demo) -> None:
    a = demo.analytics
    opened = a.opportunities[a.opportunities["status"] == "open"]
    share = len(a.actions) / len(opened)
    assert 150 <= len(opened) <= 400
    assert 0.10 <= share <= 0.25, f"{len(a.actions)} of {len(opened)} open deals flagged ({share:.0%})"
    checks = a.flags["check"].value_counts()
    for check, most in (("past_due", 0.08), ("stalled", 0.12), ("no_activity", 0.08), ("missing_fields", 0.06)):
        assert checks.get(check, 0) / len(opened) <= most, check
    assert not {"stage_share", "missing_share", "source_stale"} & set(checks.index)


def test_stage_ages_look_like_a_team(demo) -> None:
    a = demo.analytics
    opened = a.opportunities[a.opportunities["status"] == "open"]
    median = opened.groupby("stage")["days_in_stage"].median()
    limits = dict(zip(("Lead generation", "Qualification", "Contact", "Proposal", "Closing"), STAGE_LIMITS, strict=True))
    for stage, days in median.items():
        assert days <= limits[stage], (stage, days)
    assert opened["stage_entered_estimated"].sum() == 0  # both exports give the stage entry date


def test_both_sources_are_fresh(demo) -> None:
    assert [(s.name, s.stale, s.rows_loaded > 0) for s in demo.sources] == [("crm_export", False, True),
                                                                           ("partner_export", False, True)]


def test_formula_looking_names_are_closed_deals() -> None:
    deals, _ = generate_demo(date(2026, 6, 30))
    named = deals[deals["Deal Name"].isin(INJECTIONS)]
    assert sorted(set(named["Deal Name"])) == sorted(INJECTIONS)  # (one is also copied into a rejected duplicate)
    assert set(named["Stage"]) <= {"Won", "Lost"}  # never among the deals to act on
    assert len(generate_partner_deals(date(2026, 6, 30))) == 36


def test_demo_config_demo_data_only(tmp_path: Path) -> None:
    """The demo config's links come from its templates, on an example.com host."""
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "demo.yaml").read_text())
    assert [s["record_url_template"] for s in cfg["sources"]] == [
        "https://crm.example.com/deals/{opportunity_id}", "https://partners.example.com/deals/{opportunity_id}"]
