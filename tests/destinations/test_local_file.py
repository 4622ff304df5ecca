"""The local folder destination: atomic publish, the previous file kept on failure, path placeholders."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from connectors.destinations.local_file import expand_path, fill_placeholders, publish
from connectors.errors import DestinationError

OLD = b"PK\x03\x04 previous workbook " * 100
NEW = b"PK\x03\x04 new workbook " * 5000


@pytest.fixture
def staged(tmp_path) -> Path:
    path = tmp_path / "staging" / "rendered.xlsx"
    path.parent.mkdir()
    path.write_bytes(NEW)
    return path


def test_publish_replaces_the_target_and_leaves_no_temp_file(tmp_path, staged):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "pipeline.xlsx"
    target.write_bytes(OLD)
    assert publish(staged, target) == target
    assert target.read_bytes() == NEW
    assert sorted(p.name for p in out.iterdir()) == ["pipeline.xlsx"]
    assert staged.read_bytes() == NEW  # the staged copy is left to its owner


def test_publish_creates_missing_folders(tmp_path, staged):
    target = tmp_path / "a" / "b" / "pipeline.xlsx"
    publish(staged, target)
    assert target.read_bytes() == NEW
    assert [p.name for p in target.parent.iterdir()] == ["pipeline.xlsx"]


def test_publish_twice_is_idempotent(tmp_path, staged):
    target = tmp_path / "pipeline.xlsx"
    publish(staged, target)
    publish(staged, target)
    assert target.read_bytes() == NEW


def _break_staged_missing(tmp_path: Path, staged: Path, target: Path) -> tuple[Path, Path]:
    staged.unlink()
    return staged, target


def _break_target_is_directory(tmp_path: Path, staged: Path, target: Path) -> tuple[Path, Path]:
    folder = target.parent / "pipeline-dir.xlsx"
    folder.mkdir()
    (folder / "keep.txt").write_text("inside")
    return staged, folder


def _break_parent_is_a_file(tmp_path: Path, staged: Path, target: Path) -> tuple[Path, Path]:
    return staged, target.parent / "pipeline.xlsx" / "nested.xlsx"


@pytest.mark.parametrize(
    ("breaker", "reason"),
    [
        (_break_staged_missing, "No such file or directory"),
        (_break_target_is_directory, "Is a directory"),
        (_break_parent_is_a_file, "File exists"),  # mkdir of the parent folder
    ],
    ids=["staged-missing", "target-is-directory", "parent-is-a-file"],
)
def test_failure_keeps_the_previous_file_and_no_temp_file(tmp_path, staged, breaker, reason):
    out = tmp_path / "out"
    out.mkdir()
    previous = out / "pipeline.xlsx"
    previous.write_bytes(OLD)
    src, target = breaker(tmp_path, staged, previous)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(DestinationError) as info:
        publish(src, target)
    assert str(info.value) == f"cannot write {target}: {reason}; the previous file is unchanged"
    assert previous.read_bytes() == OLD
    assert sorted(p.name for p in out.iterdir()) == before  # no temp file left behind
    if target.is_dir():
        assert [p.name for p in target.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("out/pipeline-{as_of}.xlsx", "out/pipeline-2026-11-27.xlsx"),
        ("out/{period}/pipeline-{as_of}.xlsx", "out/2026-Q4/pipeline-2026-11-27.xlsx"),
        ("out/{period}-{period}.xlsx", "out/2026-Q4-2026-Q4.xlsx"),
        ("out/pipeline.xlsx", "out/pipeline.xlsx"),
        ("out/{{literal}}-{as_of}.xlsx", "out/{literal}-2026-11-27.xlsx"),
    ],
)
def test_fill_placeholders(template, expected):
    assert fill_placeholders(template, as_of=date(2026, 11, 27), period="2026-Q4") == expected


def test_expand_path():
    assert expand_path("/srv/{period}.xlsx", as_of=date(2026, 1, 2), period="2026-01") == Path("/srv/2026-01.xlsx")


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ("out/{quarter}.xlsx", "{quarter}"),
        ("out/{0}.xlsx", "{0}"),
        ("out/{}.xlsx", "{}"),
        ("out/{as_of.year}.xlsx", "{as_of.year}"),
        ("out/{as_of[0]}.xlsx", "{as_of[0]}"),
        ("out/{as_of:%Y}.xlsx", "{as_of:%Y}"),
        ("out/{period!r}.xlsx", "{period!r}"),
    ],
)
def test_unknown_placeholders_are_rejected(template, named):
    with pytest.raises(DestinationError) as info:
        fill_placeholders(template, as_of=date(2026, 11, 27), period="2026-Q4")
    assert str(info.value) == (
        f"destination path {template!r}: unknown placeholder {named}; use {{as_of}} or {{period}}"
    )


@pytest.mark.parametrize("template", ["out/{as_of.xlsx", "out/as_of}.xlsx"])
def test_unbalanced_braces_are_rejected(template):
    with pytest.raises(DestinationError, match=r"^destination path .*: .*; write placeholders as \{as_of\} or \{period\}"):
        fill_placeholders(template, as_of=date(2026, 11, 27), period="2026-Q4")


def test_new_workbook_gets_normal_permissions_and_a_replaced_one_keeps_its_own(tmp_path):
    import os
    import stat

    from connectors.destinations.local_file import publish as publish_file

    staged = tmp_path / "staged.xlsx"
    staged.write_bytes(b"book")
    old = os.umask(0o022)
    try:
        target = publish_file(staged, tmp_path / "out" / "new.xlsx")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600: teams share this file
    target.chmod(0o640)
    publish_file(staged, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
