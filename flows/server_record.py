"""Where `serve` left its local Prefect server, so a manual `run` can use it instead of a temporary one.

`serve` (when it starts its own server) writes `prefect-server.json` into the state folder of each
config it serves: the API URL, its process id and the owner's uid. `run` reads it before importing
Prefect: a record that is not the user's own file, whose process is gone or whose API does not
answer `/api/health` within half a second is ignored (and removed when stale), and the run falls
back to Prefect's temporary server. Nothing here imports Prefect.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

RECORD = "prefect-server.json"
HEALTH_TIMEOUT = 0.5  # seconds: a live local server answers in milliseconds


def record_path(state_dir: Path) -> Path:
    return state_dir / RECORD


def write_record(state_dir: Path, api_url: str, pid: int) -> Path:
    """Record the server (owner-only file, written atomically)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = record_path(state_dir)
    tmp = path.with_name(f".{RECORD}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"api_url": api_url, "pid": pid, "uid": os.getuid()}, fh)
    os.replace(tmp, path)
    return path


def remove_record(state_dir: Path, pid: int) -> None:
    """Remove the record if it still names the server of `pid`."""
    path = record_path(state_dir)
    data = _read(path)
    if data is not None and data.get("pid") == pid:
        path.unlink(missing_ok=True)


def find_server(state_dir: Path) -> str | None:
    """The API URL of a live server recorded in `state_dir`, else None (a stale record is removed)."""
    path = record_path(state_dir)
    data = _read(path)
    if data is None:
        return None
    url, pid = data.get("api_url"), data.get("pid")
    if not isinstance(url, str) or not url.startswith("http://127.0.0.1:") or not isinstance(pid, int):
        return None
    if not _alive(pid) or not _healthy(url):
        if not _alive(pid):
            path.unlink(missing_ok=True)
        return None
    return url


def _read(path: Path) -> dict | None:
    try:
        st = path.lstat()
        if not path.is_file() or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return None  # someone else's (or a writable) file never points our runs anywhere
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _healthy(api_url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never via a proxy
    try:
        with opener.open(f"{api_url}/health", timeout=HEALTH_TIMEOUT) as resp:
            return resp.status == 200
    except OSError:
        return False
