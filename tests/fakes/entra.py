"""A fake Microsoft Entra ID (v2) authority for msal, per api-contracts.md section 4.

Serves the OpenID configuration, the token endpoint (client credentials with a secret or a
certificate assertion, device code, refresh token), the device-code endpoint and instance
discovery. Issued access tokens are remembered so the fake Graph can check them (`valid`).
Switches: `pending_polls` (device flow answers authorization_pending that many times),
`token_status` (force one error status on the next token request), `token_loop` (answer the next
refresh-token request with AADSTS50196), `revoke()`.

Throttling as Microsoft describes it (https://learn.microsoft.com/entra/msal/dotnet/advanced/client-and-server-throttling):
"for client_credentials grant ... Microsoft Entra ID will reply with 429 Too Many Requests, with a
Retry-After: 60 header" (the body is plain text, AzureAD/microsoft-authentication-library-for-dotnet#2855);
"for user-facing calls ... an invalid_grant error code and a message set to AADSTS50196: The server
terminated an operation because it encountered a loop". A 5xx carries no Retry-After.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import jwt

from tests.fakes.server import Request, Response

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def _b64url(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _error(status: int, code: str, desc: str, codes: list[int] | None = None) -> Response:
    return Response(status, {
        "error": code, "error_description": desc, "error_codes": codes or [],
        "timestamp": "2025-05-01 10:00:00Z", "trace_id": "0000-trace", "correlation_id": "0000-corr",
        "error_uri": f"https://login.microsoftonline.com/error?code={(codes or [0])[0]}",
    })


@dataclass
class FakeEntra:
    tenant: str = "11111111-2222-3333-4444-555555555555"
    client_id: str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    client_secret: str | None = "s3cr3t-Value~not-for-logs"
    certificate_public_key: str | None = None  # PEM; enables client assertions
    username: str = "adele@contoso.com"
    expires_in: int = 3599
    pending_polls: int = 1
    token_status: int | None = None  # answer the next token request with this status
    token_loop: bool = False  # answer the next refresh-token request with invalid_grant AADSTS50196
    issued: set[str] = field(default_factory=set)
    ever_issued: list[str] = field(default_factory=list)  # every token and refresh token handed out
    refresh_tokens: set[str] = field(default_factory=set)
    grants: list[str] = field(default_factory=list)  # grant_type of every token request
    _devices: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def valid(self, token: str) -> bool:
        with self._lock:
            return token in self.issued

    def revoke(self, *, refresh_tokens: bool = False) -> None:
        """Expire every access token (the next Graph call gets 401); optionally refresh tokens too."""
        with self._lock:
            self.issued.clear()
            if refresh_tokens:
                self.refresh_tokens.clear()

    def __call__(self, req: Request) -> Response:
        host = req.headers.get("host", "127.0.0.1")
        base = f"https://{host}"
        path = req.path.replace("//", "/")
        t = self.tenant
        if req.method == "GET" and path == f"/{t}/v2.0/.well-known/openid-configuration":
            return Response(200, {
                "issuer": f"{base}/{t}/v2.0",
                "authorization_endpoint": f"{base}/{t}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/{t}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/{t}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{base}/{t}/discovery/v2.0/keys",
            })
        if req.method == "GET" and path.endswith("/.well-known/openid-configuration"):
            return _error(400, "invalid_tenant", f"AADSTS90002: Tenant '{path.split('/')[1]}' not found.", [90002])
        if req.method == "GET" and path == "/common/discovery/instance":
            return Response(200, {
                "tenant_discovery_endpoint": f"{base}/{t}/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            })
        form = {k: v[0] for k, v in _form(req.body).items()}
        if req.method == "POST" and path == f"/{t}/oauth2/v2.0/devicecode":
            if form.get("client_id") != self.client_id:
                return _error(400, "unauthorized_client", "AADSTS700016: Application not found.", [700016])
            code = secrets.token_hex(8)
            with self._lock:
                self._devices[code] = self.pending_polls
            return Response(200, {
                "device_code": code, "user_code": "ABCD-EFGH", "verification_uri": "https://microsoft.com/devicelogin",
                "expires_in": 900, "interval": 0,
                "message": "To sign in, use a web browser to open the page https://microsoft.com/devicelogin "
                           "and enter the code ABCD-EFGH to authenticate.",
            })
        if req.method == "POST" and path == f"/{t}/oauth2/v2.0/token":
            return self._token(form, base)
        return Response(404, {"error": "not_found", "error_description": f"no route {req.method} {path}"})

    def _token(self, form: dict[str, str], base: str) -> Response:
        grant = form.get("grant_type", "")
        self.grants.append(grant)
        if self.token_status is not None:
            status, self.token_status = self.token_status, None
            if status == 429:
                return Response(429, "Too Many Requests", headers={"Retry-After": "60"})
            return Response(status, {"error": "temporarily_unavailable", "error_description":
                                     "AADSTS90033: A transient error has occurred. Please try again."})
        if self.token_loop and grant == "refresh_token":
            self.token_loop = False
            return _error(400, "invalid_grant", "AADSTS50196: The server terminated an operation because it "
                          "encountered a loop while processing a request.", [50196])
        if form.get("client_id") != self.client_id:
            return _error(400, "unauthorized_client", "AADSTS700016: Application with identifier was not found "
                          "in the directory.", [700016])
        if grant == "client_credentials":
            problem = self._client_auth(form, base)
            if problem:
                return problem
            return Response(200, self._issue(form, with_user=False, base=base))
        if grant == DEVICE_GRANT:
            code = form.get("device_code", "")
            with self._lock:
                left = self._devices.get(code)
                if left is None:
                    return _error(400, "bad_verification_code", "AADSTS70019: Verification code expired.", [70019])
                if left > 0:
                    self._devices[code] = left - 1
                    return _error(400, "authorization_pending", "AADSTS70016: OAuth 2.0 device flow error. "
                                  "Authorization is pending.", [70016])
                del self._devices[code]
            return Response(200, self._issue(form, with_user=True, base=base))
        if grant == "refresh_token":
            with self._lock:
                known = form.get("refresh_token") in self.refresh_tokens
                if known:
                    self.refresh_tokens.discard(form["refresh_token"])  # rotation
            if not known:
                return _error(400, "invalid_grant", "AADSTS700082: The refresh token has expired due to inactivity.",
                              [700082])
            return Response(200, self._issue(form, with_user=True, base=base))
        return _error(400, "unsupported_grant_type", f"AADSTS70003: grant {grant!r} not supported", [70003])

    def _client_auth(self, form: dict[str, str], base: str) -> Response | None:
        if "client_secret" in form:
            if self.client_secret is not None and secrets.compare_digest(form["client_secret"], self.client_secret):
                return None
            return _error(401, "invalid_client", "AADSTS7000215: Invalid client secret provided. Ensure the secret "
                          "being sent in the request is the client secret value, not the client secret ID.", [7000215])
        assertion = form.get("client_assertion")
        if assertion and self.certificate_public_key:
            try:
                claims = jwt.decode(assertion, self.certificate_public_key, algorithms=["RS256", "PS256"],
                                    audience=f"{base}/{self.tenant}/oauth2/v2.0/token")
            except jwt.PyJWTError as exc:
                return _error(401, "invalid_client", f"AADSTS700027: Client assertion failed signature "
                              f"validation ({type(exc).__name__}).", [700027])
            if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
                return _error(401, "invalid_client", "AADSTS700023: wrong issuer/subject", [700023])
            return None
        return _error(401, "invalid_client", "AADSTS7000216: 'client_assertion' or 'client_secret' is required.",
                      [7000216])

    def _issue(self, form: dict[str, str], *, with_user: bool, base: str) -> dict:
        token = "eyJ0eXAi." + secrets.token_urlsafe(24)
        with self._lock:
            self.issued.add(token)
            self.ever_issued.append(token)
        body = {"token_type": "Bearer", "expires_in": self.expires_in, "ext_expires_in": self.expires_in,
                "access_token": token}
        if not with_user:
            return body
        refresh = "rt." + secrets.token_urlsafe(24)
        with self._lock:
            self.refresh_tokens.add(refresh)
            self.ever_issued.append(refresh)
        oid = "00000000-0000-0000-66f3-3332eca7ea81"
        now = int(time.time())
        claims = {"aud": self.client_id, "iss": f"{base}/{self.tenant}/v2.0", "iat": now, "nbf": now,
                  "exp": now + 3600, "name": "Adele Vance", "oid": oid, "preferred_username": self.username,
                  "sub": "sub-" + oid, "tid": self.tenant, "ver": "2.0"}
        id_token = f"{_b64url({'typ': 'JWT', 'alg': 'none'})}.{_b64url(claims)}."
        body.update({"scope": form.get("scope", ""),
                     "refresh_token": refresh, "id_token": id_token,
                     "client_info": _b64url({"uid": oid, "utid": self.tenant})})
        return body


def _form(body: bytes) -> dict[str, list[str]]:
    return parse_qs(body.decode("utf-8"), keep_blank_values=True)
