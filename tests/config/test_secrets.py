"""Secrets and access: no configured secret or issued token in any output of the fault runs; owner-only
files; TLS on by default (a visible warning when turned off); paths that cannot leave their folder;
`${ENV}` interpolation that cannot read files or run commands."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
import yaml

from config.loader import ConfigError, load_config
from config.models import onedrive_path_problems
from connectors.destinations import local_file
from connectors.errors import DestinationError
from connectors.http.session import build_session
from flows.artifacts import flag_rows, kpi_markdown
from flows.cli import main
from flows.notify import digest_for_run, notify_failure, notify_success, render_digest
from flows.pipeline import run_pipeline
from tests.fault_matrix import AS_OF, REMOTE, World, shared_row
from tests.flows.test_notify import Receiver

# every kind of outcome: transient retries, re-authentication on all four services, stale fallbacks,
# destination failures, a killed process, a locked state store
SCANNED = ["hubspot-429-burst", "tableau-truncate", "graph-timeout", "hubspot-401", "salesforce-session",
           "tableau-401002", "graph-401", "salesforce-limit", "graph-423-fail", "graph-412", "graph-killed",
           "state-db-locked"]


@pytest.mark.parametrize("sid", SCANNED)
def test_no_secret_in_debug_logs_exceptions_or_the_workbook_of_a_fault_run(sid: str) -> None:
    row = shared_row(sid)
    assert len(row.secrets) >= 4  # the four configured secrets, plus every token the fakes issued
    if sid != "state-db-locked":  # that run stops before any request
        assert "DEBUG urllib3.connectionpool" in row.log_text  # DEBUG really was captured
    places = {"logs (DEBUG and up)": row.log_text, "exception": row.error_text, "workbook cells": row.workbook_text,
              "matrix row": row.observed}
    for where, text in places.items():
        hits = [s[:6] + "..." for s in row.secrets if s in text]
        assert hits == [], f"{sid}: secret in {where}"


def test_the_tokens_scanned_for_include_those_the_services_issued() -> None:
    row = shared_row("graph-401")  # Graph token revoked mid-upload: two Entra tokens, a Salesforce token
    issued = [s for s in row.secrets if s.count(".") == 2 or len(s) > 40]
    assert len(issued) >= 2


# ----------------------------------------------------------------------------- notifications, artifacts, stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    with World(tmp_path_factory.mktemp("secrets-world")) as w:
        yield w


@pytest.fixture
def receiver():
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def _captured_run(world: World, folder: Path):
    """run_pipeline with a step wrapper that keeps the run context and the transform's result (as the flow does)."""
    seen: dict = {}

    def wrap(step, name):
        def call(*args, **kwargs):
            out = step(*args, **kwargs)
            seen.setdefault("run", args[0])
            if name == "transform":
                seen["transformed"] = out
            return out
        return call

    loaded = load_config(folder / "pipeline.yaml", env=world.env())
    result = run_pipeline(folder / "pipeline.yaml", AS_OF, loaded=loaded, wrap=wrap, retry_policy=world.policy([]))
    return loaded, result, seen


def test_digest_artifacts_and_alerts_of_a_stale_run_hold_no_secret(world: World, receiver: Receiver) -> None:
    folder = world.restore("notify-stale")
    world.write_config(folder)
    world.fakes.wire["hubspot"].before[2] = lambda: setattr(world.fakes.hub, "token", "pat-na1-rotated")
    loaded, result, seen = _captured_run(world, folder)
    assert any(s.stale for s in result.sources)
    digest = digest_for_run(seen["run"], result, seen["transformed"])
    title, body = render_digest(digest)
    markdown = kpi_markdown(digest, digest.all_kpis)
    rows = str(flag_rows(seen["transformed"].analytics.flags))
    from config.models import NotifyConfig

    sent = notify_success([NotifyConfig(url=receiver.url("ok"), on=["success"])], digest, secrets=loaded.secrets)
    assert sent == [0]
    payloads = " ".join(raw.decode() for _, _, raw in receiver.received)
    secrets = world.secrets()
    for where, text in {"digest": title + body, "KPI artifact": markdown, "flags artifact": rows,
                        "webhook payload": payloads}.items():
        assert [s for s in secrets if s in text] == [], where


def test_a_failure_alert_with_a_secret_in_the_error_is_scrubbed(world: World, receiver: Receiver) -> None:
    from config.models import NotifyConfig

    folder = world.restore("notify-fail")
    world.write_config(folder)
    loaded = load_config(folder / "pipeline.yaml", env=world.env())
    token = world.env()["HUBSPOT_TOKEN"]
    error = DestinationError(f"upload refused for Bearer {token} (client secret {world.env()['GRAPH_SECRET']})")
    assert notify_failure([NotifyConfig(url=receiver.url("fail"), on=["failure"])], report="faults", step="publish",
                          error=error, run_url=None, secrets=loaded.secrets) == [0]
    raw = receiver.received[0][2].decode()
    assert token not in raw and world.env()["GRAPH_SECRET"] not in raw and "***" in raw


@pytest.mark.parametrize(("sid", "code"), [("graph-423-fail", 1), ("hubspot-401", 0)])
def test_cli_stderr_of_a_fault_run_holds_no_secret(world: World, capsys, monkeypatch, sid: str, code: int) -> None:
    folder = world.restore(f"cli-{sid}")
    for k, v in world.env().items():
        monkeypatch.setenv(k, v)
    if sid == "graph-423-fail":
        world.write_config(folder, **{"destinations.0.on_locked": "fail"})
        world.fakes.graph.lock(REMOTE, -1)
    else:
        world.write_config(folder)
        world.fakes.wire["hubspot"].before[2] = lambda: setattr(world.fakes.hub, "token", "pat-na1-rotated")
    assert main(["run", "--config", str(folder / "pipeline.yaml"), "--as-of", AS_OF.isoformat(), "--no-prefect"]) == code
    out = capsys.readouterr()
    if code == 1:
        lines = out.err.strip().splitlines()  # progress lines, then the one error line
        assert [x for x in lines if x.startswith("pipeline-sync:")] == [lines[-1]] and "is locked" in lines[-1]
    else:
        assert "STALE" in out.out
    assert "Traceback" not in out.err
    assert [s for s in world.secrets() if s in out.err + out.out] == []


# ----------------------------------------------------------------------------- files and TLS


def test_state_store_and_its_folder_are_owner_only_after_runs(world: World) -> None:
    state = world.snapshot / ".state"
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.rglob("*") if p.is_file()}
    assert "pipeline-sync.db" in files
    assert {name: mode for name, mode in files.items() if mode & 0o077} == {}


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_new_state_db_token_cache_and_report_lock_are_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    import os

    import msal

    from connectors.http.msal_auth import save_cache
    from connectors.state.db import make_engine
    from flows.schedules import report_lock

    old = os.umask(umask)
    try:
        make_engine("sqlite:///" + str(tmp_path / "s" / "pipeline-sync.db")).dispose()
        save_cache(msal.SerializableTokenCache(), tmp_path / "s" / "msal-token-cache.json")
        with report_lock(tmp_path / "s" / "locks" / "r.lock", "skip") as lock:
            assert lock.acquired
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert modes == {"pipeline-sync.db": 0o600, "msal-token-cache.json": 0o600, "r.lock": 0o600}


def test_tls_verification_is_on_by_default() -> None:
    assert build_session().verify is True
    assert build_session(ca_bundle="/x/ca.pem").verify == "/x/ca.pem"
    from config.models import (
        HubSpotSourceConfig,
        OneDriveDestinationConfig,
        SalesforceSourceConfig,
        TableauSourceConfig,
    )

    for model in (HubSpotSourceConfig, SalesforceSourceConfig, TableauSourceConfig, OneDriveDestinationConfig):
        assert model.model_fields["verify_tls"].default is True


def test_turning_tls_verification_off_warns_visibly(world: World) -> None:
    folder = world.restore("tls-off")
    world.write_config(folder, **{"sources.0.verify_tls": False, "sources.0.ca_bundle": None})
    from urllib3.exceptions import InsecureRequestWarning

    with pytest.warns(InsecureRequestWarning):  # urllib3 warns on every unverified request too
        out = world.run(folder, capture=True)
    assert out.error is None  # the untrusted fake certificate was accepted ...
    assert "WARNING connectors.http.session: TLS certificate verification is OFF" in out.log_text  # ... and said so


def test_the_warning_reaches_stderr_at_the_default_level(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        build_session(verify_tls=False)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "use ca_bundle instead" in caplog.text


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize(("path", "problem"), [
    ("/Sales/../Finance/x.xlsx", "cannot leave their folder"),
    ("/../x.xlsx", "cannot leave their folder"),
    ("/Sales/./x.xlsx", "cannot leave their folder"),
    ("Sales/x.xlsx", "must start with '/'"),
    ("C:/Sales/x.xlsx", "must start with '/'"),
    ("\\\\server\\share\\x.xlsx", "must start with '/'"),
    ("/Sales/CON.xlsx", "reserved name"),
    ("/NUL/x.xlsx", "reserved name"),
    ("/Sales/com1.xlsx", "reserved name"),
    ("/Sales/a\\..\\b.xlsx", "characters OneDrive does not allow"),
    ("/Sales/x.xlsx:stream", "characters OneDrive does not allow"),
])
def test_onedrive_paths_cannot_leave_their_folder(path: str, problem: str) -> None:
    assert any(problem in p for p in onedrive_path_problems(path)), onedrive_path_problems(path)


@pytest.mark.parametrize("path", ["/Sales/../{period}.xlsx", "/NUL/Pipeline {period}.xlsx"])
def test_a_bad_onedrive_path_is_a_config_error_before_any_run(tmp_path: Path, path: str) -> None:
    cfg = {"sources": [{"name": "s", "type": "csv", "path": "d.csv"}],
           "destinations": [{"type": "onedrive", "tenant_id": "t", "client_id": "c", "client_secret": "s3cret-value",
                             "user": "a@b.c", "path": path}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml")
    assert "destinations[0]: path:" in err.value.render()


@pytest.mark.parametrize("name", ["CON.xlsx", "nul.xlsx", "out/AUX/pipeline.xlsx", "LPT1.xlsx", "COM9.backup.xlsx"])
def test_a_local_path_naming_a_windows_device_is_a_config_error(tmp_path: Path, name: str) -> None:
    cfg = {"sources": [{"name": "s", "type": "csv", "path": "d.csv"}], "destinations": [{"type": "file", "path": name}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml")
    assert "reserved device name" in err.value.render() and "destinations[0]" in err.value.render()


@pytest.mark.parametrize("template", ["out/{as_of.__class__}.xlsx", "out/{0}.xlsx", "out/{period!r}.xlsx",
                                      "out/{as_of:../../x}.xlsx", "out/{HOME}.xlsx"])
def test_local_placeholders_only_fill_as_of_and_period(template: str) -> None:
    from datetime import date

    with pytest.raises(DestinationError, match="placeholder"):
        local_file.fill_placeholders(template, as_of=date(2026, 11, 27), period="2026-Q4")
    assert local_file.fill_placeholders("out/{period}/{as_of}.xlsx", as_of=date(2026, 11, 27),
                                        period="2026-Q4") == "out/2026-Q4/2026-11-27.xlsx"


# ----------------------------------------------------------------------------- ${ENV}


@pytest.mark.parametrize("value", ["${/etc/passwd}", "$(cat /etc/passwd)", "`cat /etc/passwd`", "${HOME:-/etc/passwd}",
                                   "${file:/etc/passwd}", "$HOME", "${ENV:HOME}", "@/etc/passwd", "file:///etc/passwd"])
def test_env_interpolation_cannot_read_files_or_run_commands(tmp_path: Path, value: str) -> None:
    cfg = {"sources": [{"name": "s", "type": "csv", "path": "d.csv"}], "destinations": [{"type": "file", "path": "o.xlsx"}],
           "notify": [{"url": "json://127.0.0.1/hook", "on": ["failure"]}], "report": "r"}
    text = yaml.safe_dump(cfg).replace("json://127.0.0.1/hook", f"json://127.0.0.1/hook?x={value}")
    (tmp_path / "c.yaml").write_text(text)
    loaded = load_config(tmp_path / "c.yaml", env={"HOME": "/root"})
    url = loaded.config.notify[0].url
    assert url.endswith(value) and "root:" not in url  # stays literal: nothing read, nothing run


def test_only_plain_env_names_are_interpolated(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("sources: [{name: s, type: csv, path: '${DIR}/d.csv'}]\n"
                                     "destinations: [{type: file, path: o.xlsx}]\n")
    loaded = load_config(tmp_path / "c.yaml", env={"DIR": "/data"})
    assert loaded.config.sources[0].path == "/data/d.csv"


def test_yaml_cannot_build_python_objects(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("report: !!python/object/apply:os.system ['touch pwned']\n"
                                     "sources: [{name: s, type: csv, path: d.csv}]\ndestinations: [{type: file, path: o.xlsx}]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "c.yaml")
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- redaction outside the CLI's streams


def _registered(tmp_path: Path, value: str) -> None:
    """`value` reaches the tool through `${...}` (load_config registers it and installs log redaction)."""
    (tmp_path / "r.yaml").write_text("sources: [{name: s, type: csv, path: d.csv}]\n"
                                     "destinations: [{type: file, path: 'out/${PART}/p.xlsx'}]\n")
    assert value in load_config(tmp_path / "r.yaml", env={"PART": value}).secrets


def test_log_records_are_redacted_whatever_handler_they_reach(tmp_path: Path) -> None:
    import io

    secret, password = "Zq7kP2wX-log-31f0", "pw-not-from-env-88"
    _registered(tmp_path, secret)
    # a logger and handler configured after the config was loaded (as Prefect configures its API handlers)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("prefect.flow_runs.redaction-test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise DestinationError(f"cannot write out/{secret}/p.xlsx")
        except DestinationError as exc:
            logger.error("publish to https://svc:%s@host/x failed: %s", password, exc, exc_info=True)
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert secret not in text and password not in text
    assert text.startswith("ERROR prefect.flow_runs.redaction-test: publish to https://svc:***@host/x failed: "
                           "cannot write out/***/p.xlsx\nTraceback")
    assert text.rstrip().endswith("DestinationError: cannot write out/***/p.xlsx")


def test_an_error_is_redacted_before_it_is_cut_to_one_sentence(tmp_path: Path) -> None:
    from flows.notify import one_sentence

    secret = "Zq7kP2wX-cut-5e9a1c"
    _registered(tmp_path, secret)
    sentence = one_sentence(RuntimeError("x" * 290 + secret + " tail"))  # the 300-character cut falls inside it
    assert secret[:6] not in sentence and "***" in sentence


def test_an_exception_and_its_causes_are_redacted_in_place(tmp_path: Path) -> None:
    from connectors.redact import redact_exception

    secret = "Zq7kP2wX-exc-77b2"
    _registered(tmp_path, secret)
    try:
        try:
            raise PermissionError(13, "Permission denied", f"/srv/out/{secret}/p.xlsx")
        except OSError as low:
            raise DestinationError(f"cannot write /srv/out/{secret}/p.xlsx ({low.strerror})") from low
    except DestinationError as exc:
        caught = exc
    assert redact_exception(caught) is caught
    assert str(caught) == "cannot write /srv/out/***/p.xlsx (Permission denied)"
    assert str(caught.__cause__) == "[Errno 13] Permission denied: '/srv/out/***/p.xlsx'"


def test_prefect_steps_leave_their_exceptions_redacted(tmp_path: Path) -> None:
    from flows.sync import _redacting

    secret = "Zq7kP2wX-step-4d0e"
    _registered(tmp_path, secret)

    def publish(run: object, index: int) -> str:
        raise DestinationError(f"cannot write out/{secret}/p.xlsx")

    step = _redacting(publish)
    assert step.__name__ == "publish" and list(__import__("inspect").signature(step).parameters) == ["run", "index"]
    with pytest.raises(DestinationError, match=r"^cannot write out/\*\*\*/p\.xlsx$"):
        step(None, 0)


def test_a_path_clash_error_does_not_quote_the_secret_in_the_path(tmp_path: Path) -> None:
    secret = "Zq7kP2wX-clash-0a6b"
    (tmp_path / secret).mkdir()
    (tmp_path / secret / "d.csv").write_text("opportunity_id\n")
    (tmp_path / "c.yaml").write_text("sources: [{name: s, type: csv, path: '${PART}/d.csv'}]\n"
                                     "destinations: [{type: file, path: '${PART}/d.csv'}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml", env={"PART": str(tmp_path / secret)})
    assert err.value.problems and secret not in err.value.render() and "***" in err.value.render()


def test_an_error_body_echoing_a_secret_is_redacted_before_it_is_cut(tmp_path: Path) -> None:
    from connectors.http.session import default_error_message
    from tests.fakes.server import FakeServer, Response

    secret = "Zq7kP2wX-body-c3d8aa"
    _registered(tmp_path, secret)
    body = "proxy error " + "." * 455 + f" Authorization: Bearer {secret} rejected"  # the 500-character cut is inside it
    with FakeServer(lambda req: Response(502, body), tmp_path) as server:
        resp = build_session(ca_bundle=server.ca_path).get(server.url + "/x", timeout=5)
    message = default_error_message(resp)
    assert resp.status_code == 502 and message.startswith("proxy error ...")
    assert secret[:6] not in message
