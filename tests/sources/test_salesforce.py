"""The Salesforce connector against the HTTPS Salesforce fake: auth, paging, history, faults."""

from __future__ import annotations

import json
import logging
from datetime import UTC
from pathlib import Path

import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from config.models import DEFAULT_STAGES
from connectors.errors import FatalAPIError, RetriableAPIError
from connectors.http.session import HttpClient, build_session
from connectors.sources.salesforce import SalesforceAPI, jwt_audience
from tests.fakes.salesforce import (
    FAST,
    STAGE_MAP,
    SalesforceFake,
    make_cfg,
    make_ctx,
    oid,
    rsa_key_pair,
    run,
    running_fake,
)
from tests.shared_fixtures import recorded_text
from transforms.canonical import canonicalize, canonicalize_history


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, bytes]:
    return rsa_key_pair()


@pytest.fixture()
def fake(tmp_path: Path, rsa_key: tuple[bytes, bytes]):
    with running_fake(tmp_path, rsa_key[1]) as sf:
        yield sf


def test_full_extract_maps_fields_history_and_products(fake: SalesforceFake) -> None:
    events: list = []
    out = run(fake, make_ctx(events=events))
    rec = out.records.set_index("opportunity_id")
    assert list(rec.index) == [oid(n) for n in range(1, 6)]
    assert out.records["_row"].tolist() == [1, 2, 3, 4, 5]
    a = rec.loc[oid(1)]
    assert (a["name"], a["account_name"], a["owner"], a["stage"], a["amount"]) == (
        "Acme renewal", "Acme", "Dana Lee", "Proposal/Price Quote", 12500.0)
    assert (a["created_date"], a["close_date"], a["stage_entered_date"]) == (
        "2025-03-01T09:00:00.000+0000", "2025-06-30", "2025-04-15T10:00:00.000+0000")
    assert (a["last_activity_date"], a["next_step_date"], a["lead_source"]) == ("2025-04-28", "2025-05-10", "Web")
    assert rec["deal_type"].tolist() == ["existing", "new", "existing", None, "new"]
    assert rec["status"].tolist() == ["open", "open", "won", "lost", "open"]
    assert rec["product"].tolist() == ["Software", "Services", None, None, None]
    assert rec.loc[oid(4), "account_name"] is None and rec.loc[oid(4), "amount"] is None
    # history: one row per stage change (the amount-only row is not a stage entry)
    assert out.history.values.tolist() == [
        [oid(1), "Prospecting", "2025-03-01T09:00:00.000+0000"],
        [oid(1), "Needs Analysis", "2025-03-20T09:00:00.000+0000"],
        [oid(1), "Proposal/Price Quote", "2025-04-15T10:00:00.000+0000"],
        [oid(3), "Closed Won", "2025-04-20T12:00:00.000+0000"],
    ]
    # raw: the SOQL fields as Salesforce sent them, plus the line items' product
    assert list(out.raw.columns[:4]) == ["Id", "Name", "AccountId", "Account.Name"]
    assert out.raw.loc[0, "SystemModstamp"] == "2025-04-01T08:00:00.000+0000"
    assert out.raw.loc[0, "Probability"] == 75.0 and out.raw.loc[0, "Family"] == "Software"
    # paging at 2 rows a page: 3 Opportunity pages, progress after each
    assert [e for k, e in events if k == "page"] == [
        {"source": "sfdc", "records": 2, "pages": 1}, {"source": "sfdc", "records": 4, "pages": 2},
        {"source": "sfdc", "records": 5, "pages": 3}]
    assert fake.rows_served("Opportunity") == 5
    soql = fake.queries[0][1]
    assert soql.startswith("SELECT Id, Name, AccountId, Account.Name, Amount, StageName") and "Owner.Name" in soql
    assert out.requests == len(fake.served) + len(fake.token_grants) + 1  # + GET /limits
    assert out.retries == 0 and out.pending_state is None

    result = canonicalize(out.records, source="sfdc", stages=list(DEFAULT_STAGES), stage_map=STAGE_MAP, tz=UTC)
    assert result.rejected.empty and len(result.loaded) == 5
    loaded = result.loaded.set_index("opportunity_id")
    assert loaded.loc[oid(1), "stage"] == "Proposal" and loaded.loc[oid(1), "created_date"] == pd.Timestamp("2025-03-01")
    assert loaded.loc[oid(3), "status"] == "won" and loaded.loc[oid(5), "deal_type"] == "new"
    hist = canonicalize_history(out.history, source="sfdc", tz=UTC, stages=list(DEFAULT_STAGES), stage_map=STAGE_MAP)
    assert hist["stage"].tolist() == ["Lead generation", "Contact", "Proposal", "Won"]


def test_jwt_bearer_flow_signs_with_the_private_key(fake: SalesforceFake, tmp_path: Path, rsa_key) -> None:
    key_file = tmp_path / "server.key"
    key_file.write_bytes(rsa_key[0])
    srv = fake.server
    out = run(fake, auth="jwt", username=fake.username, private_key_path=str(key_file), login_url=srv.url,
              domain=None, client_secret=None)
    assert fake.token_grants == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert len(out.records) == 5


@pytest.mark.parametrize("problem", ["other_key", "wrong_user", "missing_file"])
def test_jwt_failures_are_fatal_and_name_the_fix(fake: SalesforceFake, tmp_path: Path, rsa_key, problem: str) -> None:
    key_file = tmp_path / "server.key"
    if problem == "other_key":
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_file.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    elif problem == "wrong_user":
        key_file.write_bytes(rsa_key[0])
    srv = fake.server
    user = "someone@else.example" if problem == "wrong_user" else fake.username
    with pytest.raises(FatalAPIError) as err:
        run(fake, auth="jwt", username=user, private_key_path=str(key_file), login_url=srv.url)
    if problem == "missing_file":
        assert "private_key_path" in str(err.value) and str(key_file) in str(err.value)
        assert fake.token_grants == []
    else:
        assert "invalid_grant: user hasn't approved this consumer" in str(err.value)
        assert "pre-authorized" in str(err.value)


@pytest.mark.parametrize(("field", "expected"), [("client_id", "invalid_client_id: client identifier invalid"),
                                                 ("client_secret", "invalid_client: invalid client credentials")])
def test_bad_client_credentials_are_fatal_without_the_secret(fake: SalesforceFake, field: str, expected: str) -> None:
    wrong = "wrong-" + "s3cr3t-value-xyz"
    with pytest.raises(FatalAPIError) as err:
        run(fake, **{field: wrong})
    assert expected in str(err.value) and "client_secret" in str(err.value)
    assert fake.client_secret not in str(err.value) and "s3cr3t-value-xyz" not in str(err.value)


@pytest.mark.parametrize("fault", ["503", "500", "drop", "truncate"])
def test_transient_faults_end_like_a_clean_run(fake: SalesforceFake, fault: str) -> None:
    clean = run(fake)
    fake.faults = {fake.data_requests + 2: fault}  # the second data request of the next run
    out = run(fake)
    pd.testing.assert_frame_equal(out.records, clean.records)
    pd.testing.assert_frame_equal(out.history, clean.history)
    assert out.retries == 1 and out.requests == clean.requests + 1


def test_expired_session_mid_run_signs_in_again_once(fake: SalesforceFake) -> None:
    clean = run(fake)
    fake.token_grants.clear()
    fake.faults = {fake.data_requests + 3: "expire"}
    out = run(fake)
    pd.testing.assert_frame_equal(out.records, clean.records)
    assert fake.token_grants == ["client_credentials", "client_credentials"]


def test_session_rejected_again_after_sign_in_is_fatal(fake: SalesforceFake) -> None:
    fake.faults = {2: "expire", 3: "expire"}
    with pytest.raises(FatalAPIError, match="a new session was rejected too .*INVALID_SESSION_ID"):
        run(fake)
    assert len(fake.token_grants) == 2


def test_request_limit_exceeded_is_a_clear_fatal_error(fake: SalesforceFake) -> None:
    fake.api_max = fake.api_used = 2  # used up before the run starts
    with pytest.raises(FatalAPIError) as err:
        run(fake)
    msg = str(err.value)
    assert "daily API request allocation is used up" in msg and "REQUEST_LIMIT_EXCEEDED" in msg
    assert "api-usage=3/2" in msg
    assert fake.data_requests == 1  # not retried: GET /limits already answers 403 TotalRequests


def test_persistent_5xx_gives_up_as_retriable(fake: SalesforceFake) -> None:
    fake.faults = {n: "503" for n in range(1, 10)}
    with pytest.raises(RetriableAPIError, match="gave up after 4 attempts.*SERVER_UNAVAILABLE"):
        run(fake)


def test_limit_header_at_debug_and_no_secret_in_logs(fake: SalesforceFake, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="connectors")  # whatever an earlier CLI run set it to
    fake.faults = {3: "expire", 4: "503"}
    run(fake)
    messages = [r.getMessage() for r in caplog.records]
    assert any("api-usage=" in m for m in messages if "sfdc" in m)
    assert [r.levelno for r in caplog.records if "api-usage=" in r.getMessage()][0] == logging.DEBUG
    text = "\n".join(messages)
    for secret in [fake.client_secret, *fake.issued_tokens]:
        assert secret not in text
    assert len(fake.issued_tokens) == 2


@pytest.mark.parametrize(("version", "ok"), [("65.0", True), ("v64.0", True), ("62.0", False)])
def test_api_version_is_configurable(fake: SalesforceFake, version: str, ok: bool) -> None:
    srv = fake.server
    if ok:
        run(fake, api_version=version)
        data_paths = [r.path for r in srv.requests if r.path != "/services/oauth2/token"]
        prefix = f"/services/data/v{version.lstrip('v')}"
        assert data_paths[0] == f"{prefix}/limits"
        assert len(data_paths) == 9 and all(p.startswith(f"{prefix}/query") for p in data_paths[1:])
    else:
        with pytest.raises(FatalAPIError, match=r"HTTP 404: NOT_FOUND"):
            run(fake, api_version=version)


def test_type_map_overrides_and_unknown_types_are_noted(fake: SalesforceFake) -> None:
    fake.update(oid(2), "2025-04-02T08:00:00.000+0000", Type="Partner Referral")
    out = run(fake)
    assert out.notes == ["Type 'Partner Referral' (1 opportunity) is not in type_map: add it as new or existing"]
    result = canonicalize(out.records, source="sfdc", stages=list(DEFAULT_STAGES), stage_map=STAGE_MAP, tz=UTC)
    assert result.rejected["reason"].tolist() == ["deal_type 'Partner Referral' is not new or existing"]
    out = run(fake, type_map={"partner referral": "existing", "Renewal": "new"})
    assert out.notes == []
    assert out.records["deal_type"].tolist() == ["new", "existing", "existing", None, "new"]


def test_product_from_an_opportunity_field(fake: SalesforceFake) -> None:
    fake.update(oid(5), "2025-04-05T08:00:00.000+0000", Product_Line__c="Hardware")
    out = run(fake, product_field="Opportunity.Product_Line__c")
    assert out.records["product"].tolist() == [None, None, None, None, "Hardware"]
    assert not any("OpportunityLineItem" in q for _, q in fake.queries)


def test_recorded_pages_replay_and_absolute_next_url_stays_on_the_instance(fake: SalesforceFake) -> None:
    """simple-salesforce's recorded query/queryAll pages (absolute nextRecordsUrl on example.com)."""
    pages = {name: json.loads(recorded_text("salesforce", name)) for name in (
        "query_page1_nextRecordsUrl.json", "query_page2_done.json",
        "queryAll_page1_nextRecordsUrl.json", "queryAll_page2_done.json")}
    srv = fake.server
    cfg = make_cfg(fake)
    api = SalesforceAPI(cfg, HttpClient(build_session(srv.ca_path), policy=FAST))
    api.authenticate()
    fake.recorded_pages = pages
    assert list(api.query("SELECT Id FROM Opportunity")) == [[{"ID": "1"}], [{"ID": "2"}]]
    assert list(api.query("SELECT Id FROM Opportunity", include_deleted=True)) == [[{"ID": "1"}], [{"ID": "2"}]]
    assert [r.path for r in srv.requests[-4:]] == [
        "/services/data/v66.0/query", "/query/next-records-id", "/services/data/v66.0/queryAll", "/queryAll/next-records-id"]


@pytest.mark.parametrize(("login_url", "aud"), [
    ("https://login.salesforce.com/", "https://login.salesforce.com"),
    ("https://test.salesforce.com", "https://test.salesforce.com"),
    ("https://acme.my.salesforce.com", "https://login.salesforce.com"),
    ("https://acme--uat.sandbox.my.salesforce.com", "https://test.salesforce.com"),
    ("https://acme.my.site.com/customers", "https://acme.my.site.com/customers"),
])
def test_jwt_audience(login_url: str, aud: str) -> None:
    assert jwt_audience(login_url) == aud


def test_an_unknown_field_is_fatal_with_salesforce_message(fake: SalesforceFake) -> None:
    with pytest.raises(FatalAPIError, match=r"HTTP 400: INVALID_FIELD: No such column 'Missing__c' on entity 'Opportunity'"):
        run(fake, next_step_field="Missing__c")
