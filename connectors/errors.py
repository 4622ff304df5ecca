"""Errors named by what the caller should do (after singer-sdk's exceptions)."""

from __future__ import annotations


class PipelineSyncError(Exception):
    """Base of every error this project raises on purpose."""


class RetriableAPIError(PipelineSyncError):
    """A transient failure (429, 5xx, dropped connection, timeout) that outlived the retry policy.

    Running the step again later may succeed; nothing was half-written.
    """


class FatalAPIError(PipelineSyncError):
    """The service refused the request (bad credentials, permissions, bad input, quota gone).

    Retrying will not help; the message says what to fix.
    """


class SourceDataError(PipelineSyncError):
    """A source file or response cannot be read as a table at all (not a single bad row)."""


class DestinationError(PipelineSyncError):
    """The workbook could not be delivered; the previous file is intact."""
