"""Destination configs: one model per built-in destination `type` (a local file, OneDrive/SharePoint)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from config.models.base import RelPath, StrictModel
from connectors.registry import typed_config

_WINDOWS_DEVICES = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(10)}


class FileDestinationConfig(StrictModel):
    type: Literal["file"]
    path: RelPath  # may contain {as_of} and {period}

    @field_validator("path", mode="before")
    @classmethod
    def _no_device_names(cls, value: object) -> object:
        """CON, NUL, ... (any extension, any folder) are devices on Windows: a workbook written there is lost."""
        if isinstance(value, str):
            for seg in value.replace("\\", "/").split("/"):
                if seg.split(".", 1)[0].strip().lower() in _WINDOWS_DEVICES:
                    raise ValueError(f"'{seg}' is a reserved device name on Windows (CON, PRN, AUX, NUL, COM0-9, "
                                     "LPT0-9): a workbook written there is lost; choose another name")
        return value


_DRIVE_BAD_CHARS = set('"*:<>?\\|') | {chr(c) for c in range(32)}
_DRIVE_RESERVED = {".lock", "con", "prn", "aux", "nul", "desktop.ini"} | {
    f"{p}{i}" for p in ("com", "lpt") for i in range(10)
}


def onedrive_path_problems(path: str) -> list[str]:
    """Why `path` is not a safe OneDrive/SharePoint file path inside its drive ([] when it is)."""
    if not path.startswith("/"):
        return [f"'{path}' must start with '/' (the drive's root), e.g. /Sales/Pipeline.xlsx"]
    problems = []
    parts = path[1:].split("/")
    for seg in parts:
        if seg in ("", ".", ".."):
            problems.append(f"'{path}' has an empty, '.' or '..' segment: paths cannot leave their folder")
            break
        bad = sorted(set(seg) & _DRIVE_BAD_CHARS)
        if bad:
            problems.append(f"'{seg}' contains characters OneDrive does not allow: {' '.join(map(repr, bad))}")
        stem = seg.split(".", 1)[0].lower()
        if seg.lower() in _DRIVE_RESERVED or stem in _DRIVE_RESERVED - {".lock", "desktop.ini"}:
            problems.append(f"'{seg}' is a reserved name on OneDrive/SharePoint")
        if seg.startswith("~$") or "_vti_" in seg.lower():
            problems.append(f"'{seg}' is not allowed on OneDrive/SharePoint ('~$' prefix or '_vti_')")
        if seg != seg.strip() or seg.endswith("."):
            problems.append(f"'{seg}' starts or ends with a space or ends with '.'")
    if not problems and not parts[-1].lower().endswith(".xlsx"):
        problems.append(f"'{path}' must name an .xlsx file")
    if len(path) > 400:
        problems.append(f"'{path[:40]}...' is longer than 400 characters")
    return problems


class OneDriveDestinationConfig(StrictModel):
    type: Literal["onedrive"]
    tenant_id: str
    client_id: str
    client_secret: str | None = Field(default=None, repr=False)  # never logged or shown
    certificate_path: RelPath | None = None
    certificate_thumbprint: str | None = None
    auth: Literal["app", "delegated"] = "app"
    authority: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com/v1.0"
    ca_bundle: RelPath | None = None
    verify_tls: bool = True
    user: str | None = None
    site: str | None = None
    drive_id: str | None = None
    me: bool = False
    path: str
    mode: Literal["replace", "update_sheets"] = "replace"
    conflict: Literal["replace", "fail_if_changed"] = "replace"
    on_locked: Literal["wait", "sibling", "fail"] = "wait"
    chunk_size: int = Field(default=10 * 1024 * 1024, gt=0, lt=60 * 1024 * 1024)  # Graph: pieces under 60 MiB
    lock_wait_max: float = Field(default=900.0, ge=0)  # on_locked: wait gives up after this many seconds
    # delegated: msal's token cache (kept 0600); by default in .state/ next to the config file
    token_cache: RelPath | None = Field(default=".state/msal-token-cache.json", validate_default=True)
    timeout: float = 60.0

    @model_validator(mode="after")
    def _check(self) -> OneDriveDestinationConfig:
        where = [k for k in ("user", "site", "drive_id") if getattr(self, k)] + (["me"] if self.me else [])
        if len(where) != 1:
            raise ValueError("give exactly one of user / site / drive_id / me: true")
        if self.me and self.auth != "delegated":
            raise ValueError("'me: true' needs auth: delegated (an app has no 'me' drive)")
        if self.auth == "app" and not (self.client_secret or self.certificate_path):
            raise ValueError("auth 'app' needs client_secret or certificate_path")
        if self.certificate_path and not self.certificate_thumbprint:
            raise ValueError("certificate_path needs certificate_thumbprint")
        path_problems = onedrive_path_problems(self.path)
        if path_problems:
            raise ValueError("path: " + "; ".join(path_problems))
        if self.chunk_size % (320 * 1024):
            raise ValueError("chunk_size must be a multiple of 327680 bytes (320 KiB)")
        if self.mode == "update_sheets" and self.auth != "delegated":
            raise ValueError(
                "mode 'update_sheets' uses the Graph Excel API, which does not take app-only tokens: "
                "set auth: delegated and sign in once with 'pipeline-sync login'"
            )
        return self


# One `destinations:` item: validated by the model that connectors.registry names for its `type`.
DestinationConfig = typed_config("destination")
