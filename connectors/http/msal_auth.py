"""Microsoft Entra ID tokens for Graph through msal: app-only (secret or certificate) and delegated.

App-only uses the client-credentials grant (unattended schedules). Delegated signs in once with
the device-code flow (`pipeline-sync login --config PATH`) and keeps msal's token cache in a file
created owner-only (0600) in a folder created owner-only (0700), so scheduled runs reuse the
refresh token silently. A cache or its folder that another user owns, or that group/others may
write, is refused as the state folder is (connectors.state.private: StateFolderError naming the
path and the fix): a planted cache would hand the run someone else's account.

msal fetches the authority's OpenID configuration when an application object is built, so apps are
built only when a token is needed. Its HTTP goes through `connectors.http.session.build_session` (a
TlsSession), so a configured `ca_bundle` wins over REQUESTS_CA_BUNDLE. No token or secret is ever
logged or put into an exception message.

Throttling and outages are retriable, never a configuration error: Entra answers a throttled
client-credentials request with "429 Too Many Requests, with a Retry-After: 60 header" (a plain
text body), a throttled user-facing one with invalid_grant AADSTS50196, an outage with a 5xx
(https://learn.microsoft.com/entra/msal/dotnet/advanced/client-and-server-throttling). msal would
parse the 429 body as JSON (and crash) and hand a 429/5xx to its own replay cache, so the http
client given to msal (`_ThrottleAware`) raises on a 429 or 5xx before msal sees it; every such
answer and AADSTS50196 become a RetriableAPIError (the flow retries the step later).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msal
import requests
from msal.exceptions import MsalServiceError

from config.models import OneDriveDestinationConfig
from connectors.errors import FatalAPIError, RetriableAPIError
from connectors.http.session import build_session
from connectors.redact import redact
from connectors.state.private import check_private_file, private_dir

log = logging.getLogger(__name__)

# Hosts msal knows; for any other authority host (a sovereign cloud's own, a test fake) instance
# discovery on login.microsoftonline.com is switched off.
_KNOWN_AUTHORITY_HOSTS = frozenset({
    "login.microsoftonline.com", "login.chinacloudapi.cn", "login-us.microsoftonline.com",
    "login.microsoftonline.us", "login.microsoftonline.de",
})
CACHE_FILE_NAME = "msal-token-cache.json"


def graph_resource(cfg: OneDriveDestinationConfig) -> str:
    """`https://graph.microsoft.com` for the configured Graph base URL (sovereign clouds differ)."""
    parts = urlsplit(cfg.graph_url)
    return f"{parts.scheme}://{parts.netloc}"


def app_scopes(cfg: OneDriveDestinationConfig) -> list[str]:
    return [f"{graph_resource(cfg)}/.default"]


def delegated_scopes(cfg: OneDriveDestinationConfig) -> list[str]:
    return [f"{graph_resource(cfg)}/Files.ReadWrite.All"]


def authority_url(cfg: OneDriveDestinationConfig) -> str:
    return f"{cfg.authority.rstrip('/')}/{cfg.tenant_id.strip('/')}"


def cache_path(cfg: OneDriveDestinationConfig, config_dir: Path | None = None) -> Path:
    """`token_cache` (default `.state/msal-token-cache.json`, which the config loader resolves
    against the config's folder); a relative path left over is taken from `config_dir` or the cwd."""
    path = Path(cfg.token_cache or Path(".state") / CACHE_FILE_NAME).expanduser()
    return path if path.is_absolute() else (config_dir or Path.cwd()) / path


def _login_hint() -> str:
    return "run `pipeline-sync login --config PATH` once to sign in (device code) and store the token cache"


# ----------------------------------------------------------------------------- token cache file


def _private_folder(path: Path) -> None:
    """The cache's folder: created 0700 if missing, refused if someone else owns it or may write it."""
    private_dir(path.parent, tighten=path.parent.name == ".state", what="token cache folder")


def load_cache(path: Path) -> msal.SerializableTokenCache:
    """Read the cache file if it exists (it and its folder private, else StateFolderError); a file
    others can read but not write is tightened to 0600 (with a warning)."""
    cache = msal.SerializableTokenCache()
    _private_folder(path)
    if check_private_file(path, "token cache"):
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("token cache %s was readable by others (mode %o); setting it to 0600", path, mode)
            os.chmod(path, 0o600)
        try:
            cache.deserialize(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise FatalAPIError(f"token cache {path} cannot be read ({type(exc).__name__}); "
                                "delete it and sign in again with `pipeline-sync login --config PATH`") from None
    return cache


def save_cache(cache: msal.SerializableTokenCache, path: Path) -> None:
    """Write the cache atomically into a file that only its owner can read or write (0600), in a
    private folder (0700)."""
    _private_folder(path)
    fd, tmp = tempfile.mkstemp(prefix=".msal-cache-", dir=path.parent)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(cache.serialize())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- msal applications


def _credential(cfg: OneDriveDestinationConfig) -> str | dict[str, Any]:
    if cfg.client_secret:
        return cfg.client_secret
    if not cfg.certificate_path:
        raise FatalAPIError("auth 'app' needs client_secret or certificate_path in the onedrive destination")
    path = Path(cfg.certificate_path)
    if path.suffix.lower() in (".pfx", ".p12"):
        return {"private_key_pfx_path": str(path)}
    try:
        pem = path.read_text(encoding="ascii")
    except (OSError, ValueError) as exc:
        raise FatalAPIError(f"certificate_path {path} cannot be read ({type(exc).__name__}): "
                            "give a PEM file holding the private key (or a .pfx)") from None
    if "PRIVATE KEY-----" not in pem:
        raise FatalAPIError(f"certificate_path {path} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    thumbprint = (cfg.certificate_thumbprint or "").replace(":", "").replace(" ", "")
    return {"private_key": pem, "thumbprint": thumbprint}


class TokenEndpointBusy(requests.HTTPError):
    """Entra answered 429 or 5xx (raised inside msal's http client, so msal neither parses nor caches it)."""

    def __init__(self, response: requests.Response):
        super().__init__(f"HTTP {response.status_code}", response=response)
        self.status = response.status_code
        self.retry_after = response.headers.get("Retry-After")


class _ThrottleAware:
    """The http client msal gets: our session's post/get, raising TokenEndpointBusy on 429 and 5xx."""

    def __init__(self, session: requests.Session):
        self.session = session

    def _check(self, resp: requests.Response) -> requests.Response:
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TokenEndpointBusy(resp)
        return resp

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self._check(self.session.post(url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self._check(self.session.get(url, **kwargs))

    def close(self) -> None:
        self.session.close()


def _app_kwargs(cfg: OneDriveDestinationConfig, session: requests.Session | None) -> dict[str, Any]:
    host = (urlsplit(cfg.authority).hostname or "").lower()
    if urlsplit(cfg.authority).scheme != "https":
        raise FatalAPIError(f"authority '{cfg.authority}' must be an https URL (msal refuses anything else)")
    kwargs: dict[str, Any] = {
        "authority": authority_url(cfg),
        "http_client": _ThrottleAware(session or build_session(cfg.ca_bundle, cfg.verify_tls)),
        "azure_region": False,
    }
    if host not in _KNOWN_AUTHORITY_HOSTS:
        kwargs["instance_discovery"] = False
    return kwargs


def _build(factory: Callable[..., Any], cfg: OneDriveDestinationConfig, **kwargs: Any) -> Any:
    """Build an msal application (which fetches the OpenID configuration), mapping failures."""
    try:
        return factory(cfg.client_id, **kwargs)
    except (requests.HTTPError, MsalServiceError) as exc:
        raise RetriableAPIError(f"Entra ID authority {authority_url(cfg)} answered {_status(exc)} "
                                "to the OpenID configuration request; try again later") from None
    except requests.RequestException as exc:
        raise RetriableAPIError(f"cannot reach the Entra ID authority {authority_url(cfg)} "
                                f"({type(exc).__name__}); check authority and network/proxy") from None
    except ValueError as exc:
        raise FatalAPIError(f"Entra ID authority {authority_url(cfg)} is not usable: check authority "
                            f"and tenant_id ({_first_line(str(exc))})") from None


def _status(exc: Exception) -> str:
    resp = getattr(exc, "response", None)
    if resp is not None:
        after = resp.headers.get("Retry-After")
        return f"HTTP {resp.status_code}" + (f" (Retry-After {after} s)" if after else "")
    return _first_line(str(exc)) or type(exc).__name__  # msal: "HTTP Error: 503"


def _first_line(text: str, limit: int = 300) -> str:
    """The first line of `text`, redacted before it is cut to `limit` (half a secret is not recognised)."""
    text = redact(text or "").strip()
    return text.splitlines()[0][:limit] if text else ""


def _oauth_error(cfg: OneDriveDestinationConfig, result: dict[str, Any], what: str) -> str:
    desc = _first_line(str(result.get("error_description", "")))
    for secret in (cfg.client_secret,):
        if secret:
            desc = desc.replace(secret, "***")
    return (f"Entra ID refused {what} for client_id {cfg.client_id} in tenant {cfg.tenant_id}: "
            f"{result.get('error', 'error')}: {desc}")


def _call(cfg: OneDriveDestinationConfig, fn: Callable[[], Any]) -> Any:
    """Run an msal call, turning throttling, outages and transport failures into RetriableAPIError."""
    try:
        result = fn()
    except (requests.HTTPError, MsalServiceError) as exc:  # TokenEndpointBusy; msal's own raise on 5xx
        raise RetriableAPIError(f"Entra ID token endpoint of tenant {cfg.tenant_id} answered "
                                f"{_status(exc)}; try again later") from None
    except requests.RequestException as exc:
        raise RetriableAPIError(f"cannot reach Entra ID for tenant {cfg.tenant_id} ({type(exc).__name__})") from None
    if isinstance(result, dict) and "AADSTS50196" in str(result.get("error_description", "")):
        raise RetriableAPIError(f"Entra ID throttled the token request of tenant {cfg.tenant_id} "
                                "(AADSTS50196: too many requests); try again later")
    return result


# ----------------------------------------------------------------------------- public API


class GraphAuth:
    """Hands out Graph access tokens for one destination; `token(refresh=True)` after a 401."""

    def __init__(self, cfg: OneDriveDestinationConfig, *, session: requests.Session | None = None,
                 config_dir: Path | None = None):
        self.cfg = cfg
        self._session = session
        self._config_dir = config_dir
        self._app: Any = None
        self._cache: msal.SerializableTokenCache | None = None

    def token(self, *, refresh: bool = False) -> str:
        if self.cfg.auth == "app":
            return self._app_token(refresh)
        return self._delegated_token(refresh)

    def _app_token(self, refresh: bool) -> str:
        if self._app is None or refresh:  # a new app has an empty in-memory cache: a fresh token
            self._app = _build(msal.ConfidentialClientApplication, self.cfg,
                               client_credential=_credential(self.cfg), **_app_kwargs(self.cfg, self._session))
        result = _call(self.cfg, lambda: self._app.acquire_token_for_client(scopes=app_scopes(self.cfg)))
        if "access_token" not in result:
            raise FatalAPIError(_oauth_error(self.cfg, result, "the client-credentials token request")
                                + " (check client_id, client_secret/certificate and the app's Graph permissions)")
        return result["access_token"]

    def _delegated_token(self, refresh: bool) -> str:
        path = cache_path(self.cfg, self._config_dir)
        if self._app is None:
            if not path.exists():
                raise FatalAPIError(f"no signed-in account for the onedrive destination (no token cache at {path}): "
                                    + _login_hint())
            self._cache = load_cache(path)
            self._app = _build(msal.PublicClientApplication, self.cfg, token_cache=self._cache,
                               **_app_kwargs(self.cfg, self._session))
        accounts = self._app.get_accounts()
        if not accounts:
            raise FatalAPIError(f"the token cache {path} holds no account: " + _login_hint())
        result = _call(self.cfg, lambda: self._app.acquire_token_silent_with_error(
            delegated_scopes(self.cfg), account=accounts[0], force_refresh=refresh))
        if self._cache is not None and self._cache.has_state_changed:
            save_cache(self._cache, path)
        if not result or "access_token" not in result:
            why = _oauth_error(self.cfg, result, "the silent sign-in") if result else "no usable refresh token"
            raise FatalAPIError(f"{why}; the sign-in of {accounts[0].get('username', '?')} has expired or was revoked: "
                                + _login_hint())
        return result["access_token"]


def acquire_token(cfg: OneDriveDestinationConfig, *, session: requests.Session | None = None,
                  config_dir: Path | None = None) -> str:
    """A Graph access token: client credentials for `auth: app`; for `auth: delegated` silently
    from the token cache, else FatalAPIError telling the user to run `pipeline-sync login`."""
    return GraphAuth(cfg, session=session, config_dir=config_dir).token()


def device_code_login(cfg: OneDriveDestinationConfig, *, echo: Callable[[str], None] = print,
                      session: requests.Session | None = None, config_dir: Path | None = None) -> str:
    """Sign in interactively with the device-code flow; persist the token cache (0600).

    Returns the signed-in account's name. `echo` shows the "go to ... and enter code ..." message.
    """
    if cfg.auth != "delegated":
        raise FatalAPIError("`pipeline-sync login` is for auth: delegated; with auth: app the tool signs in "
                            "by itself with client_secret or certificate_path")
    path = cache_path(cfg, config_dir)
    cache = load_cache(path)
    app = _build(msal.PublicClientApplication, cfg, token_cache=cache, **_app_kwargs(cfg, session))
    flow = _call(cfg, lambda: app.initiate_device_flow(scopes=delegated_scopes(cfg)))
    if "user_code" not in flow:
        raise FatalAPIError(_oauth_error(cfg, flow, "the device-code sign-in")
                            + " (is 'Allow public client flows' enabled on the app registration?)")
    echo(flow["message"])
    result = _call(cfg, lambda: app.acquire_token_by_device_flow(flow))
    if "access_token" not in result:
        raise FatalAPIError(_oauth_error(cfg, result, "the device-code sign-in"))
    save_cache(cache, path)
    claims = result.get("id_token_claims") or {}
    name = claims.get("preferred_username") or claims.get("name")
    if not name:
        accounts = app.get_accounts()
        name = accounts[0].get("username") if accounts else "unknown account"
    log.info("signed in as %s; token cache stored in %s", name, path)
    return str(name)

