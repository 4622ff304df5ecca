"""OneDrive / SharePoint destination: `publish` is its publisher in connectors.registry."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from connectors.destinations.local_file import fill_placeholders

if TYPE_CHECKING:
    from config.models.destinations import OneDriveDestinationConfig
    from connectors.registry import PublishContext

log = logging.getLogger("pipeline_sync")


def publish(dest: OneDriveDestinationConfig, staged: Path, ctx: PublishContext) -> str:
    """Upload the staged workbook to `dest.path` (placeholders filled); returns its URL (and any note).

    The upload module (msal, the Graph client) is imported only when publishing here.
    """
    from connectors.destinations.onedrive import upload

    remote = fill_placeholders(dest.path, as_of=ctx.as_of, period=ctx.period)
    kwargs = {"sleep": ctx.sleep} if ctx.sleep is not None else {}
    result = upload.publish(dest, staged, remote_path=remote, engine=ctx.engine, **kwargs)
    where = result.web_url or result.path
    if result.note:  # e.g. written next to a locked file, or a managed sheet recreated: the user must hear it
        log.warning("destination %s: %s", where, result.note)
        return f"{where} ({result.note})"
    return where
