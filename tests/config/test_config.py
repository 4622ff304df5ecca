"""Config loading: ${ENV} interpolation, unknown keys, references, defaults, paths, secrets, CLI exit code."""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.loader import ConfigError, LoadedConfig, load_config
from config.models import DEFAULT_STAGES, OneDriveDestinationConfig

BASE: dict[str, Any] = {
    "timezone": "Europe/Berlin",
    "sources": [{"name": "crm", "type": "csv", "path": "data/deals.csv"}],
    "destinations": [{"type": "file", "path": "out/pipeline-{as_of}.xlsx"}],
}
ONEDRIVE: dict[str, Any] = {
    "type": "onedrive", "tenant_id": "contoso.onmicrosoft.com", "client_id": "11111111-2222",
    "client_secret": "od-client-secret-value", "user": "reports@contoso.com", "path": "/Sales/Pipeline.xlsx",
}


def write(folder: Path, data: dict[str, Any] | str, name: str = "pipeline.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def with_(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(copy.deepcopy(changes))
    return data


def problems(tmp_path: Path, data: dict[str, Any] | str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), env=env or {})
    return info.value.problems


def load(tmp_path: Path, data: dict[str, Any] | str, env: dict[str, str] | None = None) -> LoadedConfig:
    return load_config(write(tmp_path, data), env=env or {})


# ----------------------------------------------------------------------------- ${ENV}


def test_env_var_is_interpolated(tmp_path):
    cfg = load(tmp_path, with_(timezone="${TZ_NAME}", sources=[
        {"name": "crm", "type": "csv", "path": "${DATA_DIR}/deals.csv"}]),
        env={"TZ_NAME": "America/New_York", "DATA_DIR": "/srv/exports"})
    assert cfg.config.timezone == "America/New_York"
    assert cfg.config.sources[0].path == "/srv/exports/deals.csv"


def test_missing_env_var_is_an_error_naming_it_and_its_key(tmp_path):
    data = with_(sources=[{"name": "hs", "type": "hubspot", "token": "${HUBSPOT_TOKEN}"}])
    assert problems(tmp_path, data) == [
        "sources[0].token: environment variable HUBSPOT_TOKEN is not set (export HUBSPOT_TOKEN=...)"
    ]


def test_every_missing_env_var_is_reported(tmp_path):
    data = with_(sources=[{"name": "crm", "type": "csv", "path": "${ROOT}/${SUBDIR}/deals.csv"}])
    assert problems(tmp_path, data) == [
        "sources[0].path: environment variable ROOT is not set (export ROOT=...)",
        "sources[0].path: environment variable SUBDIR is not set (export SUBDIR=...)",
    ]


def test_process_environment_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_SYNC_TEST_TZ", "Asia/Tokyo")
    cfg = load_config(write(tmp_path, with_(timezone="${PIPELINE_SYNC_TEST_TZ}")))
    assert cfg.config.timezone == "Asia/Tokyo"


# ----------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (with_(timezon="UTC"), "timezon: unknown key; did you mean 'timezone'?"),
        (with_(zzz_unrelated=1), "zzz_unrelated: unknown key"),
        (with_(sources=[{"name": "crm", "type": "csv", "path": "d.csv", "delimeter": ";"}]),
         "sources[0].delimeter: unknown key; did you mean 'delimiter'?"),
        (with_(sources=[{"name": "x", "type": "excel", "path": "d.xlsx", "sheets": "Deals"}]),
         "sources[0].sheets: unknown key; did you mean 'sheet'?"),
        (with_(sources=[{"name": "crm", "type": "csv", "path": "d.csv",
                         "stage_history": {"path": "h.csv", "colums": {}}}]),
         "sources[0].stage_history.colums: unknown key; did you mean 'columns'?"),
        (with_(sources=[BASE["sources"][0], {"name": "hs", "type": "hubspot", "token": "pat-123",
                                             "page_sise": 50}]),
         "sources[1].page_sise: unknown key; did you mean 'page_size'?"),
        (with_(destinations=[{"type": "file", "path": "o.xlsx", "pth": "x"}]),
         "destinations[0].pth: unknown key; did you mean 'path'?"),
        (with_(destinations=[{**ONEDRIVE, "tenant": "x"}]),
         "destinations[0].tenant: unknown key; did you mean 'tenant_id'?"),
        (with_(pipeline={"stages": [{"name": "A"}, {"name": "B", "max_day": 3}]}),
         "pipeline.stages[1].max_day: unknown key; did you mean 'max_days'?"),
        (with_(pipeline={"qualification": {"min_scor": 2}}),
         "pipeline.qualification.min_scor: unknown key; did you mean 'min_score'?"),
        (with_(targets={"max_stag_share": 0.4}), "targets.max_stag_share: unknown key; did you mean 'max_stage_share'?"),
        (with_(inputs={"rate": {"EUR": 1.1}}), "inputs.rate: unknown key; did you mean 'rates'?"),
    ],
    ids=["top", "top-no-hint", "csv", "excel", "stage_history", "hubspot", "file", "onedrive", "stage",
         "qualification", "targets", "inputs"],
)
def test_unknown_key_named_with_dotted_path_and_hint(tmp_path, data, expected):
    assert problems(tmp_path, data) == [expected]


def test_unknown_source_type_lists_the_types(tmp_path):
    data = with_(sources=[{"name": "crm", "type": "cvs", "path": "d.csv"}])
    assert problems(tmp_path, data) == [
        "sources[0]: unknown type 'cvs'; use one of 'csv', 'excel', 'hubspot', 'salesforce', 'tableau'"
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"destinations": BASE["destinations"]}, "sources: required key is missing"),
        (with_(sources=[{"name": "crm", "type": "csv"}]), "sources[0].path: required key is missing"),
        (with_(destinations=[{"type": "file"}]), "destinations[0].path: required key is missing"),
    ],
)
def test_required_keys(tmp_path, data, expected):
    assert problems(tmp_path, data) == [expected]


# ----------------------------------------------------------------------------- references between keys


def test_stage_map_value_must_be_a_configured_stage(tmp_path):
    data = with_(sources=[{"name": "crm", "type": "csv", "path": "d.csv",
                           "stage_map": {"Contract Sent": "Closing", "Closed Won": "Done"}}])
    assert problems(tmp_path, data) == [
        "sources[0].stage_map['Closed Won']: 'Done' is not a configured stage (pipeline.stages: "
        "Closing, Contact, Lead generation, Lost, Proposal, Qualification, Won)"
    ]


def test_stage_map_checked_against_custom_stages(tmp_path):
    data = with_(pipeline={"stages": [{"name": "Open"}, {"name": "Signed", "status": "won"}]},
                 sources=[{"name": "crm", "type": "csv", "path": "d.csv", "stage_map": {"Proposal": "Proposal"}}])
    assert problems(tmp_path, data) == [
        "sources[0].stage_map['Proposal']: 'Proposal' is not a configured stage (pipeline.stages: Open, Signed)"
    ]


def test_qualification_after_stage_must_be_a_stage(tmp_path):
    data = with_(pipeline={"qualification": {"after_stage": "Discovery"}})
    (problem,) = problems(tmp_path, data)
    assert "qualification.after_stage 'Discovery' is not a configured stage" in problem
    assert problem.endswith("use one of: Lead generation, Qualification, Contact, Proposal, Closing, Won, Lost")


@pytest.mark.parametrize(
    ("pipeline", "expected"),
    [
        ({"stages": [{"name": "A"}, {"name": "A"}]}, "stage names must be unique; repeated: A"),
        ({"stages": [{"name": "W", "status": "won"}]}, "at least one stage must have status 'open'"),
        ({"stages": [{"name": "A", "status": "closed"}]}, "pipeline.stages[0].status: Input should be"),
        ({"stages": [{"name": "A", "probability": 1.5}]},
         "pipeline.stages[0].probability: Input should be less than or equal to 1"),
    ],
)
def test_stage_rules(tmp_path, pipeline, expected):
    (problem,) = problems(tmp_path, with_(pipeline=pipeline))
    assert expected in problem


def test_duplicate_source_names(tmp_path):
    src = BASE["sources"][0]
    (problem,) = problems(tmp_path, with_(sources=[src, src]))
    assert "source names must be unique; repeated: crm" in problem


# ----------------------------------------------------------------------------- every problem at once


def test_every_problem_is_reported_at_once(tmp_path):
    data = with_(
        timezon="UTC",
        timezone="Mars/Olympus_Mons",
        pipeline={"stages": [{"name": "Open", "statu": "open"}, {"name": "Won", "status": "won"}],
                  "qualification": {"after_stage": "Nowhere"}},
        targets={"product_mix": {"A": 0.5, "B": 0.2}},
        sources=[{"name": "hs", "type": "hubspot", "token": "${HS_TOKEN}", "stage_map": {"Sent": "Closing"}},
                 {"name": "crm", "type": "csv", "path": "d.csv", "colums": {}}],
        destinations=[{"type": "file", "path": "o.xlsx", "pth": "x"}, {**ONEDRIVE, "chunk_size": 1000}],
    )
    found = problems(tmp_path, data)
    expected_parts = [
        "HS_TOKEN is not set",
        "timezone: 'Mars/Olympus_Mons' is not an IANA time zone (e.g. Europe/Berlin)",
        "timezon: unknown key; did you mean 'timezone'?",
        "pipeline.stages[0].statu: unknown key; did you mean 'status'?",
        "qualification.after_stage 'Nowhere' is not a configured stage",
        "targets.product_mix: shares must add up to 1 (they add up to 0.7)",
        "sources[0].stage_map['Sent']: 'Closing' is not a configured stage",
        "sources[1].colums: unknown key; did you mean 'columns'?",
        "destinations[0].pth: unknown key; did you mean 'path'?",
        "destinations[1]: chunk_size must be a multiple of 327680 bytes (320 KiB)",
    ]
    for part in expected_parts:
        assert sum(part in p for p in found) == 1, (part, found)
    assert len(found) == len(expected_parts), found


def test_problems_render_one_per_line(tmp_path):
    path = write(tmp_path, with_(timezon="UTC", zzz=1))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.render() == (
        f"config error in {path}:\n  - timezon: unknown key; did you mean 'timezone'?\n  - zzz: unknown key"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sources: [\n  - name: x", "not valid YAML"),
        ("- a\n- b\n", "the top level must be a mapping of keys"),
    ],
)
def test_unreadable_files(tmp_path, text, expected):
    (problem,) = problems(tmp_path, text)
    assert problem.startswith(expected)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.problems == ["cannot read the config file: No such file or directory"]


# ----------------------------------------------------------------------------- simple value rules


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "CEST", "Europe/berlin ", ""])
def test_bad_timezone(tmp_path, tz):
    assert problems(tmp_path, with_(timezone=tz)) == [
        f"timezone: '{tz}' is not an IANA time zone (e.g. Europe/Berlin)"
    ]


@pytest.mark.parametrize(
    ("mix", "total"), [({"A": 0.5, "B": 0.3}, "0.8"), ({"A": 0.6, "B": 0.6}, "1.2"), ({"A": 2}, "2")]
)
def test_product_mix_must_sum_to_one(tmp_path, mix, total):
    (problem,) = problems(tmp_path, with_(targets={"product_mix": mix}))
    assert problem.endswith(f"targets.product_mix: shares must add up to 1 (they add up to {total})")


@pytest.mark.parametrize(("text", "expected"), [("','", ","), ("';'", ";"), ('"\\t"', "\t"), ("\\t", "\t"), ("tab", "\t")])
def test_delimiter_accepts_one_character_or_a_tab(tmp_path, text, expected):
    yaml_text = f"sources:\n  - {{name: crm, type: csv, path: d.csv, delimiter: {text}}}\ndestinations: [{{type: file, path: o.xlsx}}]\n"
    assert load(tmp_path, yaml_text).config.sources[0].delimiter == expected


@pytest.mark.parametrize("text", ["';;'", "''", "comma"])
def test_delimiter_of_several_characters_is_rejected(tmp_path, text):
    yaml_text = f"sources:\n  - {{name: crm, type: csv, path: d.csv, delimiter: {text}}}\ndestinations: [{{type: file, path: o.xlsx}}]\n"
    (problem,) = problems(tmp_path, yaml_text)
    assert problem.startswith("sources[0].delimiter: delimiter ")
    assert "must be one character, e.g. ',' or ';'" in problem


def test_product_mix_within_rounding_is_fine(tmp_path):
    cfg = load(tmp_path, with_(targets={"product_mix": {"A": 0.333, "B": 0.333, "C": 0.334}}))
    assert cfg.config.targets.product_mix == {"A": 0.333, "B": 0.333, "C": 0.334}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"user": None}, "give exactly one of user / site / drive_id / me: true"),
        ({"site": "contoso.sharepoint.com:/sites/sales"}, "give exactly one of user / site / drive_id / me: true"),
        ({"user": None, "me": True}, "'me: true' needs auth: delegated (an app has no 'me' drive)"),
        ({"client_secret": None}, "auth 'app' needs client_secret or certificate_path"),
        ({"client_secret": None, "certificate_path": "cert.pem"}, "certificate_path needs certificate_thumbprint"),
        ({"path": "Sales/Pipeline.xlsx"}, "must start with '/' (the drive's root)"),
        ({"path": "/Sales/../Pipeline.xlsx"}, "has an empty, '.' or '..' segment"),
        ({"path": "/Sales/Pipe:line.xlsx"}, "contains characters OneDrive does not allow: ':'"),
        ({"path": "/con/Pipeline.xlsx"}, "'con' is a reserved name on OneDrive/SharePoint"),
        ({"path": "/Sales/~$Pipeline.xlsx"}, "is not allowed on OneDrive/SharePoint"),
        ({"path": "/Sales/Pipeline.csv"}, "must name an .xlsx file"),
        ({"path": "/Sales /Pipeline.xlsx"}, "'Sales ' starts or ends with a space"),
        ({"chunk_size": 1000}, "chunk_size must be a multiple of 327680 bytes (320 KiB)"),
        ({"mode": "update_sheets"}, "mode 'update_sheets' uses the Graph Excel API"),
        ({"mode": "overwrite"}, "destinations[0].mode: Input should be 'replace' or 'update_sheets'"),
    ],
)
def test_onedrive_rules(tmp_path, changes, expected):
    dest = {k: v for k, v in {**ONEDRIVE, **changes}.items() if v is not None}
    found = problems(tmp_path, with_(destinations=[dest]))
    assert len(found) == 1 and expected in found[0], found
    assert found[0].startswith("destinations[0]")
    assert "od-client-secret-value" not in found[0]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"user": None, "drive_id": "b!abc"},
        {"user": None, "me": True, "auth": "delegated", "client_secret": None},
        {"mode": "update_sheets", "auth": "delegated"},
        {"client_secret": None, "certificate_path": "cert.pem", "certificate_thumbprint": "AB12"},
        {"chunk_size": 327680 * 4},
    ],
)
def test_onedrive_valid(tmp_path, changes):
    dest = {k: v for k, v in {**ONEDRIVE, **changes}.items() if v is not None}
    cfg = load(tmp_path, with_(destinations=[dest]))
    (od,) = cfg.config.destinations
    assert isinstance(od, OneDriveDestinationConfig)
    assert od.path == "/Sales/Pipeline.xlsx"  # a drive path: never resolved against the config folder
    if "certificate_path" in changes:
        assert od.certificate_path == str(tmp_path / "cert.pem")


# ----------------------------------------------------------------------------- paths, defaults, secrets


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working folder must not matter
    folder = tmp_path / "conf" / "prod"
    data = with_(
        sources=[{"name": "crm", "type": "csv", "path": "../data/deals.csv",
                  "stage_history": {"path": "history.csv"}},
                 {"name": "xl", "type": "excel", "path": "/abs/deals.xlsx"},
                 {"name": "hs", "type": "hubspot", "token": "pat-1234", "ca_bundle": "certs/corp.pem"}],
        destinations=[{"type": "file", "path": "out/pipeline-{as_of}-{period}.xlsx"}],
    )
    cfg = load_config(write(folder, data), env={})
    csv_src, xl_src, hs_src = cfg.config.sources
    assert csv_src.path == str(tmp_path / "conf" / "data" / "deals.csv")
    assert csv_src.stage_history.path == str(folder / "history.csv")
    assert xl_src.path == "/abs/deals.xlsx"
    assert hs_src.ca_bundle == str(folder / "certs" / "corp.pem")
    assert cfg.config.destinations[0].path == str(folder / "out" / "pipeline-{as_of}-{period}.xlsx")
    assert cfg.base_dir == folder
    assert cfg.path == folder / "pipeline.yaml"


def test_defaults(tmp_path):
    cfg = load(tmp_path, {"sources": BASE["sources"], "destinations": BASE["destinations"]}).config
    assert [(s.name, s.status) for s in cfg.pipeline.stages] == [
        ("Lead generation", "open"), ("Qualification", "open"), ("Contact", "open"), ("Proposal", "open"),
        ("Closing", "open"), ("Won", "won"), ("Lost", "lost"),
    ]
    assert cfg.pipeline.stages == list(DEFAULT_STAGES)
    assert cfg.pipeline.qualification_stage == "Qualification"  # the second open stage
    assert cfg.pipeline.qualification.min_score == 3
    t = cfg.targets  # the defaults of shared docs/metrics.md
    assert (t.new_pipeline_per_day, t.new_pipeline_per_day_per_owner, t.prospecting_window_days) == (250, None, 30)
    assert (t.max_stage_share, t.max_age_factor, t.max_inactive_days) == (0.5, 2.0, 30)
    assert (t.max_missing_share, t.min_existing_share) == (0.1, 0.2)
    assert (t.product_mix, t.product_mix_tolerance) == (None, 0.15)
    assert (cfg.timezone, cfg.period, cfg.fiscal_year_start_month) == ("UTC", "quarter", 1)
    assert (cfg.inputs.currency, cfg.inputs.spend, cfg.inputs.rates) == ("USD", {}, {})
    src = cfg.sources[0]
    assert (src.delimiter, src.encoding, src.columns, src.stage_map, src.date_format) == (",", "utf-8", {}, {}, None)


def test_default_stages_are_not_shared_between_configs(tmp_path):
    a = load(tmp_path / "a", BASE).config
    a.pipeline.stages[0].max_days = 99
    b = load(tmp_path / "b", BASE).config
    assert b.pipeline.stages[0].max_days == 14


def test_sha256_of_the_file(tmp_path):
    path = write(tmp_path, BASE)
    assert load_config(path, env={}).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_secrets_from_env_and_secret_named_keys(tmp_path):
    data = with_(
        sources=[{"name": "hs", "type": "hubspot", "token": "${HS_TOKEN}"},
                 {"name": "tab", "type": "tableau", "server_url": "https://tab.example.com", "token_name": "ci",
                  "token_secret": "literal-tableau-secret", "view": "Sales/Pipeline"}],
        destinations=[{**ONEDRIVE}],
    )
    cfg = load(tmp_path, data, env={"HS_TOKEN": "pat-na1-from-env", "UNUSED": "never-read-value"})
    assert cfg.config.sources[0].token == "pat-na1-from-env"
    assert set(cfg.secrets) == {"pat-na1-from-env", "literal-tableau-secret", "od-client-secret-value"}


def test_short_values_are_not_treated_as_secrets(tmp_path):
    cfg = load(tmp_path, with_(timezone="${TZ}"), env={"TZ": "UTC"})
    assert cfg.secrets == ()


def test_secret_values_stay_out_of_error_messages(tmp_path):
    data = with_(sources=[{"name": "hs", "type": "hubspot", "token": "${HS_TOKEN}", "tokn": "x"}],
                 destinations=[{**ONEDRIVE, "path": "bad"}])
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), env={"HS_TOKEN": "pat-na1-from-env"})
    text = str(info.value) + info.value.render()
    assert "sources[0].tokn: unknown key; did you mean 'token'?" in text
    assert "pat-na1-from-env" not in text and "od-client-secret-value" not in text


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def quiet_cli_env(monkeypatch):
    """main() sets Prefect/telemetry variables with setdefault; pin them so the test leaves no trace."""
    for name, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                        "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
                        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING", "PREFECT_UI_ENABLED": "false"}.items():
        monkeypatch.setenv(name, value)


def test_cli_validate_config_error_exits_2_with_every_problem_on_stderr(tmp_path, capsys, quiet_cli_env,
                                                                           monkeypatch):
    monkeypatch.delenv("MISSING_FOR_CLI_TEST", raising=False)
    path = write(tmp_path, with_(timezon="UTC", timezone="${MISSING_FOR_CLI_TEST}"))
    from flows.cli import main

    assert main(["validate", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"config error in {path}:",
        "  - timezone: environment variable MISSING_FOR_CLI_TEST is not set (export MISSING_FOR_CLI_TEST=...)",
        "  - timezon: unknown key; did you mean 'timezone'?",
    ]


def test_cli_validate_ok(tmp_path, capsys, quiet_cli_env):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "deals.csv").write_text("opportunity_id,stage,created_date\n", encoding="utf-8")
    path = write(tmp_path, BASE)
    from flows.cli import main

    assert main(["validate", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"{path}: valid (1 sources, 1 destinations)"
    assert err == ""


def test_cli_validate_missing_source_file_is_a_config_error(tmp_path, capsys, quiet_cli_env):
    path = write(tmp_path, BASE)
    from flows.cli import main

    assert main(["validate", "--config", str(path)]) == 2
    _, err = capsys.readouterr()
    assert f"sources[0].path (crm): file not found: {tmp_path / 'data' / 'deals.csv'}" in err


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_cli_validate_refuses_a_source_that_is_not_a_regular_file(tmp_path, capsys, quiet_cli_env, kind):
    path = write(tmp_path, BASE)
    target = tmp_path / "data" / "deals.csv"
    target.parent.mkdir(exist_ok=True)
    target.unlink(missing_ok=True)
    target.mkdir() if kind == "folder" else os.mkfifo(target)
    from flows.cli import main

    assert main(["validate", "--config", str(path)]) == 2
    assert "sources[0].path (crm): not a regular file" in capsys.readouterr().err


def test_cli_validate_calls_an_empty_file_empty(tmp_path, capsys, quiet_cli_env):
    path = write(tmp_path, BASE)
    target = tmp_path / "data" / "deals.csv"
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(b"")
    from flows.cli import main

    assert main(["validate", "--config", str(path)]) == 0
    assert "source crm (csv): file empty (0 bytes)" in capsys.readouterr().out
