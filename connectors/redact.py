"""One redactor for every text the tool shows or writes: CLI lines, log records, About/Flags text, alerts.

`config.loader.load_config` registers every value that came from `${...}`, every value of a
secret-named key and every password in a URL's userinfo; `redact(text)` replaces each with ***
(longest first, so a secret inside another goes too) and masks any `scheme://user:password@`
it finds even when the password is not a known value.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import TextIO

MASK = "***"
MIN_LENGTH = 4  # shorter values (a port, "yes") would mask ordinary text; they are not secrets
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<password>[^@/\s]+)(?=@)")
_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register(values: Iterable[str]) -> None:
    """Add values to the set every later `redact` call masks (for the rest of the process)."""
    global _secrets
    new = {v for v in values if isinstance(v, str) and len(v) >= MIN_LENGTH}
    with _lock:
        _secrets = tuple(sorted(set(_secrets) | new, key=len, reverse=True))


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


class RedactingStream:
    """A text stream that redacts every write before passing it on (the CLI's stdout and stderr)."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> object:  # flush, fileno, isatty, encoding, ...
        return getattr(self._stream, name)
