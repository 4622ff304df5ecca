"""The fault matrix (tests/fault_matrix.py): the whole flow against the fakes, one fault at a time; every row passes.

`make faults` prints the same rows into docs/reliability.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fault_matrix import PER_SERVICE, TRANSIENT, Expect, Row, Scenario, scenarios, shared_row

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
ALL = scenarios()


def row_for(sc: Scenario) -> Row:
    try:
        return shared_row(sc.id)
    except PermissionError as exc:  # the disk-full row mounts a tmpfs (root only)
        pytest.skip(f"cannot mount a tmpfs here: {exc}")


@pytest.mark.parametrize("sc", ALL, ids=[s.id for s in ALL])
def test_every_scenario_ends_as_expected(sc: Scenario) -> None:
    row = row_for(sc)
    assert row.ok, f"{sc.title}: {row.problems} (observed: {row.observed})"
    expect: Expect = sc.expect
    if expect.kind == "same":
        assert "same workbook as a clean run" in row.observed and "STALE" not in row.observed
        assert "-> kept" not in row.cursor  # both cursors advanced
    elif expect.kind == "stale":
        assert f"STALE {expect.source}" in row.observed
        assert f"{expect.source.split('_')[0]} " in row.cursor and "-> kept" in row.cursor
    else:
        assert row.observed.startswith("failed: " + expect.error.split(":")[0])
        assert row.cursor.count("-> kept") == 2
        before, after = row.local.split(" -> ")
        if "local" in expect.intact:
            assert before == after != "none"


@pytest.mark.parametrize("sc", [s for s in ALL if s.id.split("-", 1)[1] in TRANSIENT],
                         ids=[s.id for s in ALL if s.id.split("-", 1)[1] in TRANSIENT])
def test_the_wire_fault_really_happened_and_was_waited_out(sc: Scenario) -> None:
    row = row_for(sc)
    kind = sc.id.split("-", 1)[1]
    sent = [k for k in TRANSIENT[kind][1].values()]
    assert row.injected == sent
    assert len(row.sleeps) == len(sent)  # one retry per fault, no real sleeping
    if kind == "429-burst":
        assert row.sleeps == [3.0, 3.0, 3.0]  # Retry-After honoured
    if kind == "timeout":
        assert "ReadTimeout" in row.log_text or "Timeout" in row.log_text


def test_every_service_meets_every_kind_of_transport_fault() -> None:
    kinds = {k for ks in PER_SERVICE.values() for k in ks}
    assert kinds == set(TRANSIENT)
    for service, ks in PER_SERVICE.items():
        assert {"drop", "truncate", "timeout"} <= set(ks), service
        assert any(k.startswith("429") for k in ks) and any(k[0] == "5" for k in ks), service


def test_the_document_lists_every_scenario_as_passing() -> None:
    text = DOC.read_text()
    table = text[text.index("<!-- fault-matrix:begin -->"):text.index("<!-- fault-matrix:end -->")]
    lines = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(lines) == len(ALL)
    for sc, line in zip(ALL, lines, strict=True):
        assert sc.title in line
        assert line.rstrip().endswith("| PASS |"), line
