"""One Tableau session per personal access token across processes: real child processes, one fake.

Tableau ends a token's session when the token signs in again, on any site
(https://help.tableau.com/current/server/en-us/security_personal_access_tokens.htm); the fake
does the same and counts it in `ended_by_sign_in`.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.errors import FatalAPIError, RetriableAPIError
from connectors.sources.tableau.token_lock import TokenInUseError, lock_path, token_session_lock
from tests.fakes.server import FakeServer
from tests.fakes.tableau import FakeTableau, opportunities_csv

ROOT = Path(__file__).resolve().parents[2]
OPP_VIEW = "9f1c2d3e-4b5a-4c6d-8e7f-001122334455"
TOKENS = {"etl-bot": "pat-secret-1", "other-bot": "pat-secret-2"}

# A run of the Tableau source in its own process. It imports, then waits for its "go" file (so
# children start in parallel and the test picks the moment). With "pause", it stops after the view
# lookup (signed in, before the data request) until the gate file exists, so the test can start
# another process in that window. "waiting" marks that the run logged it waits for the token's lock.
CHILD = """
import json, logging, sys, time
from datetime import UTC, date, datetime
from pathlib import Path

from config.models import TableauSourceConfig
from connectors.extracted import ExtractContext
from connectors.http.session import Observer, RetryPolicy, build_session
from connectors.sources.tableau import extract

a = json.loads(sys.argv[1])

class Marker(logging.Handler):
    def emit(self, record):
        if "waiting for another run" in record.getMessage():
            Path(a["waiting"]).touch()

logger = logging.getLogger("connectors.sources.tableau")
logger.addHandler(Marker())
logger.setLevel(logging.INFO)

def pausing():
    s = build_session(a["cfg"]["ca_bundle"])
    def hook(resp, *args, **kwargs):
        if resp.url.split("?")[0].endswith("/views"):
            Path(a["paused"]).touch()
            deadline = time.monotonic() + 60
            while not Path(a["gate"]).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
    s.hooks["response"].append(hook)
    return s

deadline = time.monotonic() + 60
while not Path(a["go"]).exists() and time.monotonic() < deadline:
    time.sleep(0.02)
cfg = TableauSourceConfig.model_validate(a["cfg"])
ctx = ExtractContext(engine=None, observer=Observer(), as_of=date(2026, 3, 31),
                     run_started=datetime(2026, 3, 31, 6, tzinfo=UTC), tz=UTC, state_dir=Path(a["state"]))
try:
    out = extract(cfg, ctx, policy=RetryPolicy(max_attempts=2, backoff_base=0.01, jitter=False),
                  session_factory=pausing if a["pause"] else None, lock_wait=a["wait"])
    print(json.dumps({"rows": len(out.records)}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


@pytest.fixture
def fake() -> FakeTableau:
    f = FakeTableau(tokens=dict(TOKENS))
    f.add_view(OPP_VIEW, "Sales Pipeline", "Opportunities", opportunities_csv(300))
    return f


@pytest.fixture
def srv(fake, tmp_path):
    with FakeServer(fake, tmp_path) as s:
        yield s


class Child:
    """One `extract` in a child process; `marks` are files it touches (paused, waiting)."""

    def __init__(self, srv: FakeServer, folder: Path, name: str, *, token: str = "etl-bot", site: str = "Samples",
                 pause: bool = False, wait: float = 60.0, go: bool = True):
        self.folder = folder
        self.files = {k: folder / f"{name}.{k}" for k in ("go", "paused", "waiting", "gate")}
        cfg = {"type": "tableau", "name": name, "server_url": srv.url, "site": site, "token_name": token,
               "token_secret": TOKENS[token], "view": "Sales Pipeline/Opportunities", "ca_bundle": srv.ca_path,
               "columns": {"Opportunity ID": "opportunity_id", "Stage": "stage", "Created Date": "created_date"}}
        args = {"cfg": cfg, "state": str(folder / ".state"), "pause": pause, "wait": wait,
                **{k: str(v) for k, v in self.files.items()}}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if go:
            self.go()

    def go(self) -> None:
        self.files["go"].touch()

    def has(self, mark: str) -> bool:
        return self.files[mark].exists()

    def release(self) -> None:
        self.files["gate"].touch()

    def result(self, timeout: float = 60) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        lines = out.strip().splitlines()
        assert lines, f"child printed nothing; stderr: {err[-2000:]}"
        return json.loads(lines[-1])

    def kill(self) -> None:
        self.go()
        self.release()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_for(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("b_site", ["Samples", ""], ids=["same-site", "other-site"])
def test_a_second_process_with_the_token_waits_instead_of_ending_the_session(srv, fake, tmp_path, b_site):
    a = Child(srv, tmp_path, "run-a", pause=True)
    b = Child(srv, tmp_path, "run-b", site=b_site, go=False)
    try:
        assert wait_for(lambda: a.has("paused")), "run A never reached its data request"
        assert fake.sign_ins == 1
        b.go()
        # either B says it waits for the lock, or (the bug) it signs in and ends A's session
        assert wait_for(lambda: b.has("waiting") or fake.sign_ins > 1)
        assert fake.sign_ins == 1 and fake.ended_by_sign_in == 0
        assert b.has("waiting")
        a.release()
        ra, rb = a.result(), b.result()
    finally:
        a.kill()
        b.kill()
    assert ra == {"rows": 300} and rb == {"rows": 300}
    assert fake.sign_ins == 2 and fake.sign_outs == 2  # no re-sign-in after a killed session
    assert fake.ended_by_sign_in == 0 and fake.live_sessions() == []


def test_waiting_is_bounded_and_names_the_holder(srv, fake, tmp_path):
    a = Child(srv, tmp_path, "run-a", pause=True)
    b = Child(srv, tmp_path, "run-b", wait=0.5, go=False)
    try:
        assert wait_for(lambda: a.has("paused"))
        b.go()
        rb = b.result()
        assert fake.sign_ins == 1 and fake.ended_by_sign_in == 0  # B gave up without signing in
        a.release()
        ra = a.result()
    finally:
        a.kill()
        b.kill()
    assert ra == {"rows": 300}
    assert rb["error"] == "TokenInUseError"
    assert f"token 'etl-bot' on {srv.url} is in use by pid {a.proc.pid} on " in rb["message"]
    assert "source 'run-a', site 'Samples', since " in rb["message"] and "waited 0 s" in rb["message"]
    assert "give each job its own personal access token" in rb["message"]
    assert TOKENS["etl-bot"] not in rb["message"]


def test_another_token_does_not_wait(srv, fake, tmp_path):
    a = Child(srv, tmp_path, "run-a", pause=True)
    b = Child(srv, tmp_path, "run-b", token="other-bot", go=False)
    try:
        assert wait_for(lambda: a.has("paused"))
        b.go()
        rb = b.result()  # finishes while A still holds etl-bot's session
        assert not a.has("gate") and a.proc.poll() is None
        a.release()
        ra = a.result()
    finally:
        a.kill()
        b.kill()
    assert ra == rb == {"rows": 300}
    assert fake.ended_by_sign_in == 0 and fake.sign_ins == 2


# ----------------------------------------------------------------------------- the lock file itself


def test_lock_file_is_owner_only_and_names_the_holder_without_secrets(tmp_path):
    state = tmp_path / ".state"
    with token_session_lock(state, "https://Tableau.example.com/", "etl-bot", site="SalesOps", source="tab") as path:
        assert path == lock_path(state, "https://tableau.example.com", "etl-bot")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        holder = json.loads(path.read_text())
        assert set(holder) == {"pid", "host", "source", "site", "since"}
        assert (holder["pid"], holder["source"], holder["site"]) == (os.getpid(), "tab", "SalesOps")
        with (pytest.raises(TokenInUseError, match=rf"in use by pid {os.getpid()} on .*source 'tab'"),
              token_session_lock(state, "https://tableau.example.com", "ETL-BOT", wait=0.0)):
            pass
    assert path.read_text() == ""  # released: nobody named
    assert issubclass(TokenInUseError, RetriableAPIError)


def test_lock_keys_server_and_token_not_site(tmp_path):
    base = lock_path(tmp_path, "https://a.example.com", "etl-bot")
    assert lock_path(tmp_path, "https://A.example.com/", " etl-bot") == base
    assert lock_path(tmp_path, "https://b.example.com", "etl-bot") != base
    assert lock_path(tmp_path, "https://a.example.com", "other-bot") != base
    assert base.parent == tmp_path / "locks" and base.name.startswith("tableau-pat-")


@pytest.mark.parametrize("make", ["file-in-the-way", "symlink"])
def test_an_unusable_lock_path_is_one_clear_error(tmp_path, make):
    state = tmp_path / ".state"
    target = lock_path(state, "https://t.example.com", "etl-bot")
    if make == "file-in-the-way":
        state.write_text("not a folder")
    else:
        target.parent.mkdir(parents=True)
        target.symlink_to(tmp_path / "elsewhere")
    with (pytest.raises(FatalAPIError, match=r"cannot open the Tableau token lock .* must be a writable folder"),
          token_session_lock(state, "https://t.example.com", "etl-bot", wait=0)):
        pass
    assert not (tmp_path / "elsewhere").exists()
