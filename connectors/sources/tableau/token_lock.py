"""One Tableau session per personal access token, across threads and processes.

Tableau: "Signing in again with the same access token, whether at the same site or a different
site, will terminate the previous session and result in an authentication error"
(https://help.tableau.com/current/server/en-us/security_personal_access_tokens.htm and
https://help.tableau.com/current/online/en-us/security_personal_access_tokens.htm). So every run
that signs in with a token first takes an OS lock (fcntl.flock) on a file named after the server
and the token name, in the state folder's `locks/`. The session ends on every site at once, which
is why the site is recorded but not part of the key. flock conflicts between separate opens of the
file even inside one process, so threads are serialised too; a crashed holder releases the lock
with its process. The file holds who has it (pid, host, source, site, since), never a secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from connectors.errors import FatalAPIError, RetriableAPIError
from connectors.state.locks import try_lock

log = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 900.0  # a run waits this long for another run using the same token
POLL_SECONDS = 0.2
_HOLDER_MAX = 4096


class TokenInUseError(RetriableAPIError):
    """Another run kept the token's session past the wait; running again later may succeed."""


def default_state_dir() -> Path:
    """The per-user state folder used when a run names none ($XDG_STATE_HOME/pipeline-sync)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pipeline-sync"


def lock_path(state_dir: Path, server_url: str, token_name: str) -> Path:
    """`<state>/locks/tableau-pat-<sha256(server, token)>.lock` (names may hold any character)."""
    key = f"{server_url.strip().rstrip('/').lower()}\n{token_name.strip().lower()}"
    return state_dir / "locks" / f"tableau-pat-{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock"


def _private_dir(path: Path) -> None:
    for folder in (path.parent, path):
        if not folder.exists():
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid == os.getuid():
        os.chmod(path, 0o700)


def _holder(fd: int) -> dict:
    try:
        found = json.loads(os.pread(fd, _HOLDER_MAX, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another run (it has not said who it is yet)"
    parts = [f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"]
    if holder.get("source"):
        parts.append(f"source '{holder['source']}'")
    if holder.get("site") is not None:
        parts.append(f"site '{holder['site']}'")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return ", ".join(parts)


@contextlib.contextmanager
def token_session_lock(state_dir: Path, server_url: str, token_name: str, *, site: str = "", source: str = "",
                       wait: float = LOCK_WAIT_SECONDS, poll: float = POLL_SECONDS,
                       clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> Iterator[Path]:
    """Hold the token's lock for the body; wait up to `wait` seconds, then TokenInUseError naming the holder."""
    path = lock_path(state_dir, server_url, token_name)
    try:
        _private_dir(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)  # a symlink here is refused
    except OSError as exc:
        raise FatalAPIError(f"cannot open the Tableau token lock {path} ({exc.strerror or type(exc).__name__}); "
                            f"the state folder {state_dir} must be a writable folder of this user") from None
    try:
        os.fchmod(fd, 0o600)
        started = clock()
        told = False
        while not try_lock(fd):
            holder = _holder(fd)
            if not told:
                log.info("tableau source '%s': waiting for another run using token '%s' (%s)", source, token_name,
                         describe_holder(holder))
                told = True
            if clock() - started >= wait:
                raise TokenInUseError(
                    f"Tableau token '{token_name}' on {server_url} is in use by {describe_holder(holder)}; "
                    f"waited {wait:.0f} s. Signing in with it would end that run's session: let it finish, "
                    f"or give each job its own personal access token (lock file {path})")
            sleep(poll)
        os.ftruncate(fd, 0)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "source": source, "site": site,
              "since": datetime.now(UTC).isoformat(timespec="seconds")}
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock
