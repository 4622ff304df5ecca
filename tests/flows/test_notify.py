"""Alerts and digests through apprise to a local webhook receiver (real HTTP), never with a secret."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import yaml

from config.models import NotifyConfig
from connectors.alerts import url_secrets
from connectors.redact import redact
from flows.artifacts import artifact_key, artifact_specs, flag_rows, kpi_markdown, workbook_url
from flows.notify import (
    CurrentFlags,
    FlagLine,
    KpiChange,
    deal_moves,
    flag_diff,
    fmt_change,
    fmt_value,
    notify_failure,
    one_sentence,
)
from flows.sync import sync_report
from tests.fakes.hubspot import TOKEN, demo_server
from tests.fakes.server import FakeServer

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "hubspot.yaml"
HOOK_TOKEN = "hooktok-7f3a9c2e5b1d"  # the secret part of the webhook URLs
PLAIN = lambda step, name: step  # noqa: E731  (the flow's body without Prefect tasks)


class Receiver:
    """A webhook endpoint on 127.0.0.1: records every POST (path, JSON body, raw bytes)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.received.append((self.path, json.loads(raw), raw))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, name: str) -> str:
        return f"json://127.0.0.1:{self.server.server_port}/{name}/{HOOK_TOKEN}"

    def to(self, name: str) -> list[dict]:
        return [body for path, body, _ in self.received if path == f"/{name}/{HOOK_TOKEN}"]

    def assert_no_secret(self, *secrets: str) -> None:
        assert self.received
        for _, _, raw in self.received:
            text = raw.decode()
            for s in secrets:
                assert s not in text


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def hubspot(tmp_path: Path):
    with demo_server(tmp_path) as (hub, srv):
        yield hub, srv


def write_config(tmp_path: Path, srv: FakeServer) -> Path:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["sources"][0].update(base_url=srv.url, ca_bundle=srv.ca_path)
    cfg["destinations"] = [{"type": "file", "path": "out/pipeline-{as_of}.xlsx"}]
    cfg["notify"] = [
        {"url": "${DIGEST_HOOK}", "on": ["success"]},
        {"url": "${FLAGS_HOOK}", "on": ["flags_changed"]},
        {"url": "${ALERT_HOOK}", "on": ["failure"]},
    ]
    path = tmp_path / "hubspot.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", TOKEN)
    for var, name in (("DIGEST_HOOK", "digest"), ("FLAGS_HOOK", "flags"), ("ALERT_HOOK", "alert")):
        monkeypatch.setenv(var, receiver.url(name))


def test_digest_after_two_runs_shows_changes_flags_and_moved_deals(tmp_path, hubspot, receiver, env):
    hub, srv = hubspot
    path = write_config(tmp_path, srv)
    hub.update("105", datetime(2026, 1, 1, tzinfo=UTC), closedate="2026-11-30T00:00:00Z")
    first = sync_report(str(path), date(2026, 11, 20), task_wrapper=PLAIN)
    assert first["flags"] == 15
    [digest1] = receiver.to("digest")
    assert digest1["title"] == "pipeline-sync: 'pipeline' refreshed (as of 2026-11-20)"
    assert "**KPIs** (no earlier snapshot)" in digest1["message"]
    assert "| open value | 23,233 USD | – |" in digest1["message"]
    assert "**Flags**: 15 open, 0 new, 0 resolved (first run: nothing to compare)" in digest1["message"]
    assert receiver.to("flags") == []  # nothing to compare yet: flags did not "change"

    changed = datetime.now(UTC) - timedelta(seconds=2)
    hub.update("101", changed, closedate="2027-01-20T00:00:00Z")  # was 2026-06-30: leaves Q4
    hub.update("105", changed, closedate="2026-12-20T00:00:00Z")  # later, still in Q4
    second = sync_report(str(path), date(2026, 11, 27), task_wrapper=PLAIN)
    assert second["flags"] == 14
    digest2 = receiver.to("digest")[1]["message"]
    assert "**KPIs** (vs snapshot of 2026-11-20)" in digest2
    assert "| open value | 23,233 USD | +0 USD |" in digest2
    assert "| open deals | 4 | +0 |" in digest2
    assert "**Flags**: 14 open, 0 new, 1 resolved" in digest2
    assert "- resolved [high] M4: 101 is still open but its close date 2026-06-29 is 144 days before as_of." in digest2
    assert ("**Top slipped deals (out of this period)**\n"
            "- Acme renewal (Ann Lee): 12,500 USD, close 2026-06-29 -> 2027-01-19") in digest2
    assert "**Top pushed deals**\n- Hooli renewal (Ann Lee): 7,000 USD, close 2026-11-29 -> 2026-12-19" in digest2
    assert "**Run health**: 7 rows read, 7 loaded, 0 rejected;" in digest2
    assert f"**Workbook**: {second['outputs'][0]}" in digest2
    [flags_msg] = receiver.to("flags")  # the flags_changed target gets the second digest only
    assert flags_msg["message"] == digest2
    assert flags_msg["type"] == "success"
    assert receiver.to("alert") == []
    receiver.assert_no_secret(TOKEN, HOOK_TOKEN)


def test_failure_alert_names_report_step_and_error_without_secrets(tmp_path, hubspot, receiver, env, monkeypatch):
    _, srv = hubspot
    path = write_config(tmp_path, srv)
    wrong = "pat-na1-99999999-8888-7777-6666-000000000000"
    monkeypatch.setenv("HUBSPOT_TOKEN", wrong)
    with pytest.raises(Exception) as caught:
        sync_report(str(path), date(2026, 11, 27), task_wrapper=PLAIN)
    [alert] = receiver.to("alert")
    assert alert["title"] == "pipeline-sync: 'pipeline' FAILED at extract-hubspot_main"
    assert alert["type"] == "failure"
    assert f"Error: {one_sentence(caught.value)}" in alert["message"]
    assert type(caught.value).__name__ in alert["message"]
    assert "No run link (run without a Prefect server)." in alert["message"]
    assert alert["message"].endswith("No workbook was changed.")
    assert receiver.to("digest") == [] and receiver.to("flags") == []
    receiver.assert_no_secret(wrong, TOKEN, HOOK_TOKEN)


def test_a_secret_inside_an_error_message_is_scrubbed_before_sending(receiver):
    fake_secret = "sk-live-0123456789abcdef"
    targets = [NotifyConfig(url=receiver.url("alert"), on=["failure"])]
    error = RuntimeError(f"token {fake_secret} was rejected by https://x.example/{HOOK_TOKEN}\nsecond line")
    assert notify_failure(targets, report="sales", step="publish-onedrive-0", error=error,
                          run_url="http://127.0.0.1:4200/runs/flow-run/abc", secrets=[fake_secret]) == [0]
    [alert] = receiver.to("alert")
    assert alert["message"].splitlines()[2] == "Error: RuntimeError: token *** was rejected by https://x.example/***."
    assert "[Run in Prefect](http://127.0.0.1:4200/runs/flow-run/abc)" in alert["message"]
    assert alert["message"].endswith("Destinations before this one may already have the new workbook; "
                                     "state was not saved.")
    receiver.assert_no_secret(fake_secret, HOOK_TOKEN)


def test_unreachable_target_is_reported_not_raised(receiver):
    targets = [NotifyConfig(url="json://127.0.0.1:1/x", on=["failure"]),
               NotifyConfig(url=receiver.url("alert"), on=["failure"])]
    assert notify_failure(targets, report="r", step="render", error=ValueError("bad"), run_url=None, secrets=()) == [1]
    assert len(receiver.to("alert")) == 1


# ----------------------------------------------------------------------------- content units


def test_value_and_change_formats():
    assert fmt_value(23233.4, "currency", "EUR") == "23,233 EUR"
    assert fmt_value(113.2, "currency_per_day") == "113 USD/day"
    assert fmt_value(0.4567, "ratio") == "45.7%"
    assert fmt_value(12.0, "pct") == "12.0%"
    assert fmt_value(None, "count") == "–"
    assert fmt_change(KpiChange("win_rate", 0.5, 0.45, "ratio")) == "+5.0 pp"
    assert fmt_change(KpiChange("open_value", 900.0, 1000.0, "currency")) == "-100 USD"
    assert fmt_change(KpiChange("open_deals", 4.0, None, "count")) == "–"


def flag_frame(*rows: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=["rule", "check", "scope", "key", "severity", "message"], dtype=object)


def test_flag_diff_orders_by_severity():
    a, b, c = (("M1", "x", "team", "all", "low", "a"), ("M4", "aged", "deal", "s:1", "high", "b"),
               ("M3", "stalled", "deal", "s:2", "medium", "c"))
    d = flag_diff(CurrentFlags(flag_frame(a, b, c)), CurrentFlags(flag_frame(a)))
    assert [f.key for f in d.new] == ["M4|aged|deal|s:1", "M3|stalled|deal|s:2"] and d.resolved == []
    assert (d.new_count, d.resolved_count) == (2, 0)
    assert d.new[0] == FlagLine("M4|aged|deal|s:1", "M4", "high", "b")
    d = flag_diff(CurrentFlags(flag_frame()), CurrentFlags(flag_frame(a, c)))
    assert d.new == [] and [f.rule for f in d.resolved] == ["M3", "M1"]
    assert (d.new_count, d.resolved_count) == (0, 2)


def test_digest_counts_every_changed_flag_but_lists_the_top_ones():
    from flows.notify import Digest, RunHealth, render_digest

    new = [FlagLine(f"M4|aged|deal|s:{i}", "M4", "medium", f"s:{i} is old") for i in range(5)]
    d = Digest("sales", date(2026, 11, 27), "2026-Q4", "EUR", [], date(2026, 11, 20), 100, new, new[:1], [], [],
               RunHealth(1, 1, 0, 1.0), [], has_previous_flags=True, new_count=12, resolved_count=1)
    _, body = render_digest(d)
    assert "**Flags**: 100 open, 12 new, 1 resolved\n- new [medium] M4: s:0 is old\n" in body
    assert "- new [medium] M4: s:4 is old\n- ... and 7 more new\n- resolved [medium] M4: s:0 is old\n" in body
    assert "more resolved" not in body and d.flags_changed
    assert "**Flags**: 100 (12 new, 1 resolved)" in kpi_markdown(d, [])
    quiet = Digest("sales", date(2026, 11, 27), "2026-Q4", "EUR", [], None, 0, [], [], [], [], RunHealth(1, 1, 0, 1.0),
                   [], has_previous_flags=True)
    assert (quiet.new_count, quiet.resolved_count, quiet.flags_changed) == (0, 0, False)


def test_pushed_and_slipped_are_ranked_by_amount():
    changes = pd.DataFrame({
        "change": ["pushed", "pushed", "pushed", "won"],
        "opportunity_id": ["1", "2", "3", "4"], "name": ["Small", "Big", "Out", "Won"],
        "owner": ["A", None, "C", "D"], "old_amount": [100.0, 900.0, 50.0, 5.0], "new_amount": [100.0, 1000.0, 500.0, 5.0],
        "old_close_date": pd.to_datetime(["2026-11-01", "2026-10-01", "2026-12-30", "2026-10-01"]),
        "new_close_date": pd.to_datetime(["2026-12-01", "2026-11-01", "2027-02-01", "2026-10-01"]),
    })
    pushed, slipped = deal_moves(changes, date(2026, 12, 31))
    assert [(m.name, m.owner, m.amount) for m in pushed] == [("Big", "(no owner)", 1000.0), ("Small", "A", 100.0)]
    assert [(m.name, str(m.old_close), str(m.new_close)) for m in slipped] == [("Out", "2026-12-30", "2027-02-01")]


def test_extra_secrets_are_masked_longest_first():
    assert redact("a abcdef b abc", ["abc", "abcdef"]) == "a *** b ***"


def _env_secret(tmp_path: Path, name: str) -> str:
    """A value that reaches the tool only through `${...}` in a config (registered by load_config)."""
    from config.loader import load_config

    secret = f"envsecret-{name}-5c81e0"
    (tmp_path / "c.yaml").write_text("sources: [{name: s, type: csv, path: d.csv}]\n"
                                     "destinations: [{type: file, path: 'out/${DEST_PART}.xlsx'}]\n")
    assert secret in load_config(tmp_path / "c.yaml", env={"DEST_PART": secret}).secrets
    return secret


@pytest.mark.parametrize("where", ["flag message", "workbook URL userinfo", "workbook path", "failure text"])
def test_a_secret_from_env_reaches_neither_the_alert_payload_nor_the_artifacts(tmp_path, receiver, where):
    from flows.notify import Digest, RunHealth, notify_success

    secret = _env_secret(tmp_path, where.replace(" ", "-"))
    flag = FlagLine("M4|aged|deal|s:1", "M4", "high", f"s:1 owner note {secret} left in a deal field")
    workbooks = {"workbook URL userinfo": [f"https://pipeline:{secret}@contoso.sharepoint.com/Sales/p.xlsx"],
                 "workbook path": [f"/srv/out/{secret}/pipeline 2026.xlsx"]}.get(where, ["/srv/out/pipeline.xlsx"])
    digest = Digest("sales", date(2026, 11, 27), "2026-Q4", "USD", [], date(2026, 11, 20), 1,
                    [flag] if where == "flag message" else [], [], [], [], RunHealth(1, 1, 0, 1.0), workbooks,
                    has_previous_flags=True)
    flags = flag_frame(("M4", "aged", "deal", "s:1", "high", flag.message if where == "flag message" else "old"))
    targets = [NotifyConfig(url=receiver.url("ok"), on=["success", "failure"])]
    if where == "failure text":
        error = RuntimeError(f"cannot write out/{secret}.xlsx: permission denied")
        assert notify_failure(targets, report="sales", step="publish-file-0", error=error, run_url=None,
                              secrets=()) == [0]
    else:
        assert notify_success(targets, digest, secrets=()) == [0]  # the redactor knows it without being told
    [(_, body, raw)] = receiver.received
    assert secret not in raw.decode() and "***" in body["message"]
    specs = artifact_specs(digest, flags)
    assert secret not in repr(specs)
    shown = {"flag message": specs[1][1]["table"][0]["message"], "workbook URL userinfo": specs[2][1]["link"],
             "workbook path": specs[2][1]["link"]}
    assert shown.get(where) == {
        "flag message": "s:1 owner note *** left in a deal field",
        "workbook URL userinfo": "https://pipeline:***@contoso.sharepoint.com/Sales/p.xlsx",
        "workbook path": "file:///srv/out/%2A%2A%2A/pipeline%202026.xlsx"}.get(where)


def test_token_parts_of_apprise_urls_count_as_secrets():
    slack = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#general"
    assert url_secrets(slack) == {slack, "T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ"}
    assert url_secrets("json://127.0.0.1:8080/hooks/pipeline") == {"json://127.0.0.1:8080/hooks/pipeline"}


def test_artifact_content():
    assert artifact_key("Sales EMEA_2026", "kpis") == "sales-emea-2026-kpis"
    flags = pd.DataFrame({"rule": ["M1", "M4", "M3"], "check": ["c1", "c4", "c3"], "severity": ["low", "high", "medium"],
                          "scope": ["team", "deal", "deal"], "key": ["all", "s:1", "s:2"], "message": ["m1", "m4", "m3"]})
    assert [r["rule"] for r in flag_rows(flags)] == ["M4", "M3", "M1"]
    assert flag_rows(flags, limit=1) == [{"rule": "M4", "check": "c4", "severity": "high", "scope": "deal", "key": "s:1",
                                          "message": "m4"}]
    assert workbook_url("https://contoso.sharepoint.com/x.xlsx") == "https://contoso.sharepoint.com/x.xlsx"
    assert workbook_url("/tmp/out/pipeline 1.xlsx") == "file:///tmp/out/pipeline%201.xlsx"
    from flows.notify import Digest, RunHealth

    d = Digest("sales", date(2026, 11, 27), "2026-Q4", "EUR", [], date(2026, 11, 20), 3, [], [], [], [],
               RunHealth(1, 1, 0, 1.0), [])
    md = kpi_markdown(d, [KpiChange("open_value", 1200.0, 1000.0, "currency")])
    assert "_change vs the snapshot of 2026-11-20_" in md
    assert "| open_value | 1,200 EUR | 1,000 EUR | +200 EUR |" in md
    d.workbooks = ["/tmp/out/pipeline.xlsx", "https://contoso.sharepoint.com/x.xlsx"]
    specs = artifact_specs(d, flags)
    assert [(kind, kw["key"]) for kind, kw in specs] == [("markdown", "sales-kpis"), ("table", "sales-flags"),
                                                         ("link", "sales-workbook"), ("link", "sales-workbook-2")]
    assert specs[1][1]["description"] == "sales: 3 flags" and [r["rule"] for r in specs[1][1]["table"]] == ["M4", "M3", "M1"]
    assert (specs[2][1]["link"], specs[2][1]["link_text"]) == ("file:///tmp/out/pipeline.xlsx", "pipeline.xlsx")
    assert artifact_specs(d, None)[1][1]["table"] == [{"rule": None, "message": "flag details are in the workbook's Flags sheet"}]


def test_a_bad_notify_url_is_named_without_echoing_it(tmp_path):
    from config.loader import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("sources: [{name: a, type: csv, path: x.csv}]\ndestinations: [{type: file, path: o.xlsx}]\n"
                    "notify: [{url: '${HOOK}', on: [failure, sucess]}]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"HOOK": f"hooks.slack.com/{HOOK_TOKEN}"})
    assert caught.value.problems == [
        "notify[0].url: is not an apprise URL (scheme://...), e.g. slack://..., json://host/path, mailtos://...",
        "notify[0].on[1]: Input should be 'failure', 'success' or 'flags_changed'",
    ]
    assert HOOK_TOKEN not in caught.value.render()


def test_named_reports_each_get_a_digest_with_their_own_kpis(tmp_path, hubspot, receiver, env):
    hub, srv = hubspot
    path = write_config(tmp_path, srv)
    cfg = yaml.safe_load(path.read_text())
    cfg.pop("destinations")
    cfg["reports"] = [
        {"name": "ann", "filter": {"owners": ["Ann Lee"]}, "destinations": [{"type": "file", "path": "out/ann.xlsx"}]},
        {"name": "everyone", "destinations": [{"type": "file", "path": "out/all.xlsx"}]},
    ]
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    sync_report(str(path), date(2026, 11, 20), task_wrapper=PLAIN)
    sync_report(str(path), date(2026, 11, 27), task_wrapper=PLAIN)
    digests = {m["title"]: m["message"] for m in receiver.to("digest")}
    assert sorted(digests) == sorted(f"pipeline-sync: '{r}' refreshed (as of {d})" for d in ("2026-11-20", "2026-11-27")
                                     for r in ("ann", "everyone"))
    everyone = digests["pipeline-sync: 'everyone' refreshed (as of 2026-11-27)"]
    ann = digests["pipeline-sync: 'ann' refreshed (as of 2026-11-27)"]
    assert "**KPIs** (vs snapshot of 2026-11-20)" in everyone and "**KPIs** (vs snapshot of 2026-11-20)" in ann
    assert "| open deals | 4 | +0 |" in everyone
    # Ann's own open deals: Acme renewal (12,500) and Hooli renewal (7,000)
    assert "| open deals | 2 | +0 |" in ann and "| open value | 19,500 USD | +0 USD |" in ann
    assert "**Flags**: 10 open (details in the workbook's Flags sheet)" in ann
    assert f"**Workbook**: {tmp_path / 'out' / 'ann.xlsx'}" in ann
    assert receiver.to("flags") == []  # flag changes are not known per named report
    receiver.assert_no_secret(TOKEN, HOOK_TOKEN)


def test_a_failed_named_report_is_reported_as_the_reports_step(tmp_path, hubspot, receiver, env):
    _, srv = hubspot
    path = write_config(tmp_path, srv)
    cfg = yaml.safe_load(path.read_text())
    cfg.pop("destinations")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the report wants a folder")
    cfg["reports"] = [
        {"name": "ann", "filter": {"owners": ["Ann Lee"]},
         "destinations": [{"type": "file", "path": str(blocker / "ann.xlsx")}]},
        {"name": "everyone", "destinations": [{"type": "file", "path": "out/all.xlsx"}]},
    ]
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(Exception, match="1 of 2 reports failed") as caught:
        sync_report(str(path), date(2026, 11, 27), task_wrapper=PLAIN)
    [alert] = receiver.to("alert")
    assert alert["title"] == "pipeline-sync: 'pipeline' FAILED at reports"
    assert f"Error: {one_sentence(caught.value)}" in alert["message"]
    assert alert["message"].endswith("Reports the error does not name were published; the sources' state was saved.")
    assert (tmp_path / "out" / "all.xlsx").is_file()
    receiver.assert_no_secret(TOKEN, HOOK_TOKEN)
