"""One redactor for every text the tool shows or writes: CLI lines, log records, About/Flags text, alerts.

`config.loader.load_config` registers every value that came from `${...}`, every value of a
secret-named key and every password in a URL's userinfo; `redact(text)` replaces each with ***
(longest first, so a secret inside another goes too) and masks any `scheme://user:password@`
it finds even when the password is not a known value. `install_log_redaction` makes every log
record (message and traceback text) pass through `redact` as it is created, whatever logger or
handler (Prefect's API handlers included) it goes to; `redact_exception` masks an exception's own
text in place before a framework (Prefect's task and flow states) records it. Redact a text before
cutting it short: a secret cut in half is no longer recognised.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import TextIO

MASK = "***"
MIN_LENGTH = 4  # shorter values (a port, "yes") would mask ordinary text; they are not secrets
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<password>[^@/\s]+)(?=@)")
_lock = threading.Lock()
_secrets: tuple[str, ...] = ()
_log_factory_installed = False


def register(values: Iterable[str]) -> None:
    """Add values to the set every later `redact` call masks (for the rest of the process)."""
    global _secrets
    new = {v for v in values if isinstance(v, str) and len(v) >= MIN_LENGTH}
    with _lock:
        _secrets = tuple(sorted(set(_secrets) | new, key=len, reverse=True))


def forget(keep: Iterable[str] = ()) -> None:
    """Forget every registered value except `keep` (a process that loads another config; the tests,
    which load many in one process and must not mask one config's values in another's output)."""
    global _secrets
    with _lock:
        _secrets = tuple(sorted({v for v in keep if isinstance(v, str) and len(v) >= MIN_LENGTH}, key=len, reverse=True))


def known() -> tuple[str, ...]:
    return _secrets


def url_passwords(text: str) -> list[str]:
    """The passwords of every `scheme://user:password@host` in `text`."""
    return [m.group("password") for m in _USERINFO.finditer(text)]


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every registered secret (and `extra`) replaced by ***, and URL passwords masked."""
    if not isinstance(text, str) or not text:
        return text
    values = _secrets if not extra else sorted({*_secrets, *(e for e in extra if e)}, key=len, reverse=True)
    for s in values:
        if s in text:
            text = text.replace(s, MASK)
    if "://" in text:
        text = _USERINFO.sub(lambda m: m.group("head") + MASK, text)
    return text


def redact_exception(exc: BaseException | None) -> BaseException | None:
    """Mask secrets in `exc` and the exceptions chained to it, in place: their string args and an
    OSError's file names (what str(exc) and tracebacks show). Returns `exc`."""
    seen: set[int] = set()
    cur = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        try:
            cur.args = tuple(redact(a) if isinstance(a, str) else a for a in cur.args)
            if isinstance(cur, OSError):
                for attr in ("strerror", "filename", "filename2"):
                    if isinstance(value := getattr(cur, attr, None), str):
                        setattr(cur, attr, redact(value))
        except (AttributeError, TypeError):  # an exception type with read-only args: leave it
            pass
        cur = cur.__cause__ or cur.__context__
    return exc


def _redact_record(record: logging.LogRecord) -> None:
    try:
        msg = record.getMessage()
    except (TypeError, ValueError):  # a malformed record: logging reports it itself
        return
    clean = redact(msg)
    if clean != msg:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact(text)  # formatters use exc_text when it is set


def install_log_redaction() -> None:
    """From now on every log record of the process is redacted when it is created (once per process).

    A record factory, not a filter: filters sit on one logger or handler and miss records that
    propagate to handlers configured later (Prefect's own logging setup replaces its handlers)."""
    global _log_factory_installed
    with _lock:
        if _log_factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _log_factory_installed = True


class RedactingStream:
    """A text stream that redacts every write before passing it on (the CLI's stdout and stderr)."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> object:  # flush, fileno, isatty, encoding, ...
        return getattr(self._stream, name)
