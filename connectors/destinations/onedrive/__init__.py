"""The OneDrive / SharePoint destination: picks the mode; `publish` is its publisher in connectors.registry.

`mode: replace` uploads the whole file (upload.py); `mode: update_sheets` refreshes the managed
sheets in place (workbook_api.py, on the calls of workbook_session.py) and, when the file does not
exist yet, uploads it whole. What survives a failure: an upload leaves the file on the drive as it
was (Graph swaps it only when an upload commits); a refresh that fails at any step is undone, so
every managed sheet is as it was and users' sheets were never written (only when the undo fails
too can managed sheets be left part-refreshed, and the error names them). upload.py and the
workbook modules share graph.py (the Graph client, drive and folder addressing) and never import
each other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import requests
import sqlalchemy as sa

from config.models.destinations import OneDriveDestinationConfig
from connectors.destinations.local_file import fill_placeholders
from connectors.destinations.onedrive import upload, workbook_api
from connectors.destinations.onedrive.graph import PublishResult
from connectors.http.msal_auth import GraphAuth
from connectors.http.session import build_session
from connectors.registry import PublishContext

log = logging.getLogger("pipeline_sync")

FIRST_UPLOAD_NOTE = "the workbook did not exist yet, so the whole rendered workbook was uploaded"


def publish(dest: OneDriveDestinationConfig, staged: Path, ctx: PublishContext) -> str:
    """Deliver `staged` to `dest.path` (placeholders filled); its URL, with any note the user must hear."""
    remote = fill_placeholders(dest.path, as_of=ctx.as_of, period=ctx.period)
    result = deliver(dest, staged, remote_path=remote, engine=ctx.engine, sleep=ctx.sleep or time.sleep)
    where = result.web_url or result.path
    if result.note:  # e.g. written next to a locked file, or a managed sheet recreated
        log.warning("destination %s: %s", where, result.note)
        return f"{where} ({result.note})"
    return where


def deliver(cfg: OneDriveDestinationConfig, workbook: Path, *, remote_path: str, engine: sa.Engine | None = None,
            session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep,
            auth: GraphAuth | None = None, config_dir: Path | None = None,
            now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> PublishResult:
    """`upload.upload_workbook` or `workbook_api.update_sheets` by `cfg.mode` (what a failure leaves: see above)."""
    if cfg.mode != "update_sheets":
        return upload.upload_workbook(cfg, workbook, remote_path=remote_path, engine=engine, session=session,
                                      sleep=sleep, auth=auth, config_dir=config_dir, now=now)
    session = session or build_session(cfg.ca_bundle, cfg.verify_tls)
    auth = auth or GraphAuth(cfg, session=session, config_dir=config_dir)
    result = workbook_api.update_sheets(cfg, workbook, remote_path=remote_path, session=session, sleep=sleep,
                                        auth=auth, config_dir=config_dir)
    if result is None:  # first run: nothing to refresh yet (the eTag is not kept in this mode)
        result = upload.upload_workbook(cfg.model_copy(update={"mode": "replace"}), workbook,
                                        remote_path=remote_path, session=session, sleep=sleep, auth=auth,
                                        config_dir=config_dir, now=now)
        result.note = FIRST_UPLOAD_NOTE
    return result
