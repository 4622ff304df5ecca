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


# ----------------------------------------------------------------------------- a cache others could plant


@pytest.mark.parametrize(("target", "mode", "what", "fix"), [
    ("folder", 0o777, "token cache folder", "chmod 700"),
    ("folder", 0o770, "token cache folder", "chmod 700"),
    ("file", 0o666, "token cache", "chmod 600"),
    ("file", 0o620, "token cache", "chmod 600"),
], ids=["folder-0777", "folder-0770", "file-0666", "file-0620"])
def test_a_cache_or_folder_others_can_write_is_refused_before_any_request(server, entra, tmp_path, target, mode,
                                                                           what, fix) -> None:
    from connectors.state.private import StateFolderError

    cfg = delegated(server, entra, tmp_path)
    msal_auth.device_code_login(cfg, echo=lambda m: None)
    path = Path(cfg.token_cache)
    assert os.stat(path.parent).st_mode & 0o777 == 0o700  # created owner-only
    os.chmod(path.parent if target == "folder" else path, mode)
    server.requests.clear()
    for attempt in (lambda: msal_auth.acquire_token(cfg), lambda: msal_auth.device_code_login(cfg, echo=print)):
        with pytest.raises(StateFolderError) as info:
            attempt()
        message = str(info.value)
        named = path.parent if target == "folder" else path
        assert message.startswith(f"{what} {named} is writable by others (mode {mode:04o})") and fix in message
        assert "\n" not in message
    assert token_requests(server) == []  # refused before msal read it or asked Entra for anything


@pytest.mark.parametrize("target", ["folder", "file"])
def test_a_cache_or_folder_another_user_owns_is_refused(server, entra, tmp_path, target) -> None:
    from connectors.state.private import StateFolderError

    if os.geteuid() != 0:
        pytest.skip("making a file another user's takes chown, which needs root")
    cfg = delegated(server, entra, tmp_path)
    msal_auth.device_code_login(cfg, echo=lambda m: None)
    path = Path(cfg.token_cache)
    os.chown(path.parent if target == "folder" else path, 4242, 4242)
    with pytest.raises(StateFolderError, match=r"not owned by you \(uid 4242, you are 0\).*remove it") as info:
        msal_auth.acquire_token(cfg)
    assert str(info.value).startswith(("token cache folder " if target == "folder" else "token cache ")
                                      + str(path.parent if target == "folder" else path))


def test_a_new_cache_folder_is_created_owner_only_whatever_the_umask(server, entra, tmp_path) -> None:
    cfg = delegated(server, entra, tmp_path, token_cache=str(tmp_path / "deep" / "cache" / "msal.json"))
    old = os.umask(0)
    try:
        msal_auth.device_code_login(cfg, echo=lambda m: None)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "deep" / "cache").st_mode & 0o777 == 0o700
    assert os.stat(tmp_path / "deep" / "cache" / "msal.json").st_mode & 0o777 == 0o600
