"""SOQL literals, the `where:` option and the Salesforce config checks."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from config.loader import ConfigError, load_config
from config.models import SalesforceSourceConfig
from config.soql import soql_literal
from tests.fakes.salesforce import oid, run, running_fake, tokenize, unescape

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "salesforce.yaml"
BASE = {"type": "salesforce", "name": "sf", "domain": "https://acme.my.salesforce.com", "client_id": "id",
        "client_secret": "secret"}


@pytest.mark.parametrize(("value", "literal"), [
    ("O'Brien", r"'O\'Brien'"),
    ('say "hi"', r"""'say \"hi\"'"""),
    ("back\\slash", r"'back\\slash'"),
    ("two\nlines\t", r"'two\nlines\t'"),
    ("50% off_now", "'50% off_now'"),
    (True, "true"),
    (None, "null"),
    (12500, "12500"),
    (0.5, "0.5"),
    (date(2025, 6, 30), "2025-06-30"),
    (datetime(2025, 5, 1, 10, 0, 0, 999, tzinfo=timezone(timedelta(hours=2))), "2025-05-01T08:00:00Z"),
])
def test_soql_literal(value: object, literal: str) -> None:
    assert soql_literal(value) == literal


@pytest.mark.parametrize("value", [datetime(2025, 5, 1), float("nan"), object()])
def test_soql_literal_refuses_what_it_cannot_write(value: object) -> None:
    with pytest.raises(ValueError):
        soql_literal(value)


@given(st.text())
def test_any_string_survives_the_soql_tokenizer(text: str) -> None:
    lit = soql_literal(text)
    assert tokenize(lit) == [("str", lit)] and unescape(lit) == text


@pytest.mark.parametrize("where", [
    "StageName != 'Closed Lost'",
    "Name = 'It\\'s; fine -- really' AND Amount > 100",
    "AccountId IN (SELECT Id FROM Account WHERE Industry = 'Tech')",
    "CloseDate = THIS_QUARTER OR (IsWon = true AND Owner.Name LIKE 'A\\_%')",
])
def test_valid_where_conditions_pass(where: str) -> None:
    assert SalesforceSourceConfig.model_validate({**BASE, "where": where}).where == where


@pytest.mark.parametrize(("where", "reason"), [
    ("Amount > 0; DELETE FROM Opportunity", "contains ';'"),
    ("Amount > 0 ORDER BY Name", "contains ORDER"),
    ("Amount > 0 LIMIT 5", "contains LIMIT"),
    ("Amount > 0) OR (Amount < 0", "closes a parenthesis it never opened"),
    ("(Amount > 0", "unclosed '('"),
    ("Name = 'abc", "never closed"),
    ('Name = "abc"', "double quote"),
    ("Name = 'a\\q'", "invalid escape"),
    ("Amount > 0 /* x */", "SOQL has no comments"),
    ("Name = 'a'\x00", "control character"),
    ("   ", "is empty"),
])
def test_dangerous_where_is_rejected_with_the_reason(where: str, reason: str) -> None:
    with pytest.raises(ValidationError) as err:
        SalesforceSourceConfig.model_validate({**BASE, "where": where})
    assert "where: " in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize(("where", "expected"), [
    ({"Account.Name": "O'Brien \\ \"Sons\""}, [5]),
    ({"Type": ["Renewal", "New Customer"]}, [1, 2]),
    ({"IsClosed": False, "Amount": 8000}, [2]),
    ("Amount >= 8000 AND IsClosed = false", [1, 2, 5]),
])
def test_where_narrows_the_query(tmp_path: Path, where: object, expected: list[int]) -> None:
    with running_fake(tmp_path) as fake:
        fake.opportunities[oid(5)]["Account"] = {"Name": "O'Brien \\ \"Sons\""}
        out = run(fake, where=where)
        assert out.records["opportunity_id"].tolist() == [oid(n) for n in expected]
        assert " WHERE (" in fake.queries[0][1]


@pytest.mark.parametrize(("over", "message"), [
    ({"domain": "https://login.salesforce.com"}, "need your My Domain URL"),
    ({"domain": "http://acme.my.salesforce.com"}, "must be an https URL"),
    ({"client_secret": None}, "auth 'client_credentials' needs: client_secret"),
    ({"auth": "jwt"}, "auth 'jwt' needs: username, private_key_path"),
    ({"auth": "jwt", "username": "u", "private_key_path": "k.pem", "login_url": "http://x"}, "login_url 'http://x'"),
    ({"api_version": "latest"}, "api_version 'latest' is not a version like 66.0"),
    ({"product_field": "Family; x"}, "product_field: 'Family; x' is not a Salesforce field name"),
    ({"next_step_field": "Account.Next__c"}, "must be a field of Opportunity itself"),
    ({"where": {"Bad Field": 1}}, "where: 'Bad Field' is not a Salesforce field name"),
    ({"where": {"Type": []}}, "where: 'Type': the list of values is empty"),
    ({"page_size": 100}, "greater than or equal to 200"),
])
def test_config_problems_name_the_key(over: dict, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        SalesforceSourceConfig.model_validate({**BASE, **over})
    assert message in str(err.value)


def test_api_version_accepts_a_leading_v() -> None:
    assert SalesforceSourceConfig.model_validate({**BASE, "api_version": "v62.0"}).api_version == "62.0"


def test_example_config_loads() -> None:
    loaded = load_config(EXAMPLE, env={"SF_CLIENT_ID": "3MVG9example", "SF_CLIENT_SECRET": "example-secret"})
    src = loaded.config.sources[0]
    assert (src.type, src.auth, src.client_id, src.product_field) == ("salesforce", "client_credentials", "3MVG9example", "Family")
    assert src.where == {"Region__c": ["EMEA", "DACH"]} and src.raw_sheet == "Salesforce raw"
    assert "example-secret" in loaded.secrets
    assert set(src.stage_map.values()) <= {s.name for s in loaded.config.pipeline.stages}


def test_example_config_without_secrets_names_the_variables() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(EXAMPLE, env={})
    assert "environment variable SF_CLIENT_ID is not set" in str(err.value)
    assert "environment variable SF_CLIENT_SECRET is not set" in str(err.value)


def test_bad_where_in_a_file_names_the_source(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("    where:\n      Region__c: [EMEA, DACH]\n",
                                       "    where: \"Amount > 0; DROP\"\n")
    path = tmp_path / "sf.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={"SF_CLIENT_ID": "x", "SF_CLIENT_SECRET": "y"})
    assert any(p.startswith("sources[0]: where: contains ';'") for p in err.value.problems), err.value.problems
