"""connectors.http.msal_auth: real msal against the fake Entra authority over HTTPS (nothing patched)."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from config.models import OneDriveDestinationConfig
from connectors.errors import FatalAPIError, RetriableAPIError
from connectors.http import msal_auth
from tests.fakes.entra import FakeEntra
from tests.fakes.server import FakeServer, Request, Response


class Router:
    def __init__(self) -> None:
        self.app: FakeEntra | None = None

    def __call__(self, req: Request) -> Response:
        return self.app(req)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    router = Router()
    with FakeServer(router, tmp_path_factory.mktemp("tls")) as server:
        yield server, router


@pytest.fixture
def entra(served: tuple[FakeServer, Router]) -> FakeEntra:
    server, router = served
    router.app = FakeEntra()
    server.requests.clear()
    return router.app


@pytest.fixture
def server(served: tuple[FakeServer, Router]) -> FakeServer:
    return served[0]


def make_cfg(server: FakeServer, entra: FakeEntra, **over) -> OneDriveDestinationConfig:
    base = dict(type="onedrive", tenant_id=entra.tenant, client_id=entra.client_id,
                client_secret=entra.client_secret, authority=server.url, graph_url="https://graph.microsoft.com/v1.0",
                ca_bundle=server.ca_path, user="adele@contoso.com", path="/Pipeline.xlsx")
    base.update(over)
    return OneDriveDestinationConfig(**base)


def delegated(server: FakeServer, entra: FakeEntra, tmp: Path, **over) -> OneDriveDestinationConfig:
    keys = dict(auth="delegated", client_secret=None, user=None, me=True, token_cache=str(tmp / "state" / "msal.json"))
    return make_cfg(server, entra, **(keys | over))


def token_requests(server: FakeServer) -> list[Request]:
    return [r for r in server.requests if r.path.endswith("/oauth2/v2.0/token")]


# ----------------------------------------------------------------------------- app-only


def test_client_secret_goes_in_the_form_body_and_yields_an_issued_token(server, entra) -> None:
    token = msal_auth.acquire_token(make_cfg(server, entra))
    assert entra.valid(token) and entra.grants == ["client_credentials"]
    (req,) = token_requests(server)
    form = req.body.decode()
    assert "grant_type=client_credentials" in form and "client_secret=" in form
    assert "scope=https%3A%2F%2Fgraph.microsoft.com%2F.default" in form
    assert "authorization" not in req.headers


def test_certificate_credential_signs_an_assertion_the_authority_verifies(server, entra, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pipeline-sync")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    pem = tmp_path / "app.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))
    entra.certificate_public_key = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    cfg = make_cfg(server, entra, client_secret=None, certificate_path=str(pem),
                   certificate_thumbprint=cert.fingerprint(hashes.SHA1()).hex().upper())
    assert entra.valid(msal_auth.acquire_token(cfg))
    form = token_requests(server)[0].body.decode()
    assert "client_assertion=" in form and "client_secret" not in form


@pytest.mark.parametrize("problem, error, match", [
    ({"client_secret": "wrong-secret-value-123"}, FatalAPIError, "invalid_client: AADSTS7000215"),
    ({"tenant_id": "no-such-tenant"}, FatalAPIError, "check authority and tenant_id"),
    ({"client_id": "ffffffff-0000-0000-0000-000000000000"}, FatalAPIError, "unauthorized_client"),
])
def test_refusals_name_what_to_fix_and_never_the_secret(server, entra, problem, error, match, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = make_cfg(server, entra, **problem)
    with pytest.raises(error, match=match) as info:
        msal_auth.acquire_token(cfg)
    for secret in (entra.client_secret, "wrong-secret-value-123"):
        assert secret not in str(info.value) and secret not in caplog.text


@pytest.mark.parametrize("status, match", [
    (429, "answered HTTP 429 .*Retry-After 60 s"), (500, "answered HTTP 500"), (502, "answered HTTP 502"),
    (503, "answered HTTP 503"), (504, "answered HTTP 504")])
def test_token_endpoint_throttling_or_outage_is_retriable_and_the_next_call_works(server, entra, status,
                                                                                  match) -> None:
    entra.token_status = status
    with pytest.raises(RetriableAPIError, match=match + ".*try again later"):
        msal_auth.acquire_token(make_cfg(server, entra))
    assert entra.valid(msal_auth.acquire_token(make_cfg(server, entra)))  # nothing of the failure was kept


@pytest.mark.parametrize("problem", ["429", "loop"])
def test_throttled_silent_sign_in_is_retriable_not_a_login_prompt(server, entra, tmp_path, problem) -> None:
    cfg = delegated(server, entra, tmp_path)
    entra.expires_in = 120  # every silent call goes to the token endpoint
    msal_auth.device_code_login(cfg, echo=lambda m: None)
    if problem == "429":
        entra.token_status = 429
    else:
        entra.token_loop = True
    with pytest.raises(RetriableAPIError, match="try again later") as info:
        msal_auth.acquire_token(cfg)
    assert "pipeline-sync login" not in str(info.value)
    assert entra.valid(msal_auth.acquire_token(cfg))


def test_plain_http_authority_is_refused(server, entra) -> None:
    with pytest.raises(FatalAPIError, match="must be an https URL"):
        msal_auth.acquire_token(make_cfg(server, entra, authority=server.url.replace("https", "http")))


# ----------------------------------------------------------------------------- delegated


def test_device_code_login_persists_an_owner_only_cache_used_silently(server, entra, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = delegated(server, entra, tmp_path)
    shown: list[str] = []
    assert msal_auth.device_code_login(cfg, echo=shown.append) == "adele@contoso.com"
    assert "ABCD-EFGH" in shown[0]
    path = Path(cfg.token_cache)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert entra.grants.count("urn:ietf:params:oauth:grant-type:device_code") == 2  # pending, then granted

    entra.expires_in = 120  # under msal's 300 s margin: the silent call must use the refresh token
    entra.revoke()
    token = msal_auth.acquire_token(cfg)
    assert entra.valid(token) and entra.grants[-1] == "refresh_token"
    assert os.stat(path).st_mode & 0o777 == 0o600  # rewritten (rotated refresh token), still private
    assert not [s for s in entra.ever_issued if s in caplog.text or s in "".join(shown)]


def test_default_cache_lives_under_state_next_to_the_config(server, entra, tmp_path) -> None:
    raw = delegated(server, entra, tmp_path).model_dump(exclude={"token_cache"})
    cfg = OneDriveDestinationConfig.model_validate(raw, context={"base_dir": str(tmp_path)})  # as the loader does
    msal_auth.device_code_login(cfg, echo=lambda m: None)
    assert os.stat(tmp_path / ".state" / "msal-token-cache.json").st_mode & 0o777 == 0o600
    assert entra.valid(msal_auth.acquire_token(cfg))
    explicit = delegated(server, entra, tmp_path, token_cache=None)  # built in code: config_dir decides
    assert msal_auth.cache_path(explicit, tmp_path / "cfg") == tmp_path / "cfg" / ".state" / "msal-token-cache.json"


def test_delegated_without_login_says_how_to_sign_in(server, entra, tmp_path) -> None:
    with pytest.raises(FatalAPIError, match=r"pipeline-sync login --config PATH"):
        msal_auth.acquire_token(delegated(server, entra, tmp_path))


def test_expired_refresh_token_says_how_to_sign_in_again(server, entra, tmp_path) -> None:
    cfg = delegated(server, entra, tmp_path)
    entra.expires_in = 120
    msal_auth.device_code_login(cfg, echo=lambda m: None)
    entra.revoke(refresh_tokens=True)
    with pytest.raises(FatalAPIError, match=r"expired or was revoked.*pipeline-sync login") as info:
        msal_auth.acquire_token(cfg)
    assert not [s for s in entra.ever_issued if s in str(info.value)]


def test_a_cache_readable_by_others_is_tightened(server, entra, tmp_path, caplog) -> None:
    cfg = delegated(server, entra, tmp_path)
    msal_auth.device_code_login(cfg, echo=lambda m: None)
    os.chmod(cfg.token_cache, 0o644)
    msal_auth.acquire_token(cfg)
    assert os.stat(cfg.token_cache).st_mode & 0o777 == 0o600
    assert "readable by others" in caplog.text


def test_login_is_only_for_delegated(server, entra) -> None:
    with pytest.raises(FatalAPIError, match="auth: delegated"):
        msal_auth.device_code_login(make_cfg(server, entra))
