"""flows.server_record: a manual run finds the Prefect server `serve` left, and nothing else."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flows import server_record


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_recorded_server_is_found(tmp_path: Path, api_url: str) -> None:
    path = server_record.write_record(tmp_path / ".state", api_url, os.getpid())
    assert path.stat().st_mode & 0o777 == 0o600
    assert server_record.find_server(tmp_path / ".state") == api_url


def test_no_record_means_no_server(tmp_path: Path) -> None:
    assert server_record.find_server(tmp_path / ".state") is None


def test_a_record_of_a_dead_process_is_removed(tmp_path: Path, api_url: str) -> None:
    path = server_record.write_record(tmp_path, api_url, _dead_pid())
    assert server_record.find_server(tmp_path) is None
    assert not path.exists()


def test_a_server_that_does_not_answer_is_not_used(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server_record.write_record(tmp_path, f"http://127.0.0.1:{port}/api", os.getpid())
    assert server_record.find_server(tmp_path) is None


@pytest.mark.parametrize("url", ["http://evil.example.com:4200/api", "file:///etc/passwd"])
def test_only_a_local_server_is_trusted(tmp_path: Path, url: str) -> None:
    server_record.write_record(tmp_path, url, os.getpid())
    assert server_record.find_server(tmp_path) is None


def test_a_record_others_can_write_is_ignored(tmp_path: Path, api_url: str) -> None:
    path = server_record.write_record(tmp_path, api_url, os.getpid())
    path.chmod(0o666)
    assert server_record.find_server(tmp_path) is None


def test_remove_only_removes_its_own_record(tmp_path: Path, api_url: str) -> None:
    path = server_record.write_record(tmp_path, api_url, os.getpid())
    server_record.remove_record(tmp_path, os.getpid() + 1)
    assert path.exists()
    server_record.remove_record(tmp_path, os.getpid())
    assert not path.exists()


@pytest.mark.parametrize(("verbosity", "ours", "theirs"), [(0, "WARNING", "WARNING"), (1, "INFO", "WARNING"),
                                                          (2, "INFO", "INFO")])
def test_verbosity_shows_our_steps_before_every_library(verbosity: int, ours: str, theirs: str) -> None:
    code = (f"import logging; from flows.cli import configure_logging; configure_logging({verbosity}); "
            "print(logging.getLevelName(logging.getLogger('connectors.sources.files').getEffectiveLevel()), "
            "logging.getLevelName(logging.getLogger('urllib3.connectionpool').getEffectiveLevel()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out == [ours, theirs]
