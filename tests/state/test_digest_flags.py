"""The digest's flag memory: identities, exact new/resolved, retention, stored text, old databases."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from connectors.state import digest_flags
from connectors.state.db import make_engine
from flows.notify import CurrentFlags, FlagLine, flag_diff, remember_flags

COLUMNS = ["rule", "check", "scope", "key", "severity", "message"]
D = date(2026, 11, 20)


def frame(*rows: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COLUMNS, dtype=object)


def idents(side: CurrentFlags) -> list[str]:
    return [i for _, part in side.texts("idents", np.arange(len(side))) for i in part]


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    return make_engine(f"sqlite:///{tmp_path / 'state.db'}")


def stored_dates(engine: sa.Engine, report: str) -> list[date]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(digest_flags.runs.c.as_of).where(
            digest_flags.runs.c.report == report)).scalars())


def reference(current: pd.DataFrame, previous: pd.DataFrame, top: int) -> tuple[int, int, list[FlagLine], list[FlagLine]]:
    """The previous version's algorithm: a FlagLine per flag, numbered one by one, sorted in full."""
    def lines(f: pd.DataFrame) -> dict[str, FlagLine]:
        out: dict[str, FlagLine] = {}
        for rule, check, scope, key, sev, msg in f[COLUMNS].itertuples(index=False, name=None):
            base = ident = f"{rule}|{check}|{scope}|{key}"
            n = 1
            while ident in out:
                n += 1
                ident = f"{base}#{n}"
            out[ident] = FlagLine(ident, str(rule), str(sev), str(msg))
        return out

    order = {"high": 0, "medium": 1, "low": 2}
    cur, prev = lines(current), lines(previous)
    new = sorted((v for k, v in cur.items() if k not in prev), key=lambda f: (order.get(f.severity, 3), f.rule, f.key))
    res = sorted((v for k, v in prev.items() if k not in cur), key=lambda f: (order.get(f.severity, 3), f.rule, f.key))
    return len(new), len(res), new[:top], res[:top]


# ----------------------------------------------------------------------------- identities


def stored_idents(engine: sa.Engine, side: CurrentFlags) -> list[str]:
    digest_flags.save(engine, "r", D, side.labels, side.chunks())
    stored = digest_flags.load_previous(engine, "r", D + timedelta(days=1))
    assert stored is not None and stored.hashes.tolist() == side.hashes.tolist()
    return [i for _, part in stored.texts("idents", np.arange(len(side))) for i in part]


@pytest.mark.parametrize("chunk_rows", [1, 3, 100])
def test_repeats_of_one_identity_are_numbered_in_order(engine, chunk_rows):
    side = CurrentFlags(frame(
        ("M7", "metric_unavailable", "team", "all", "low", "win_rate is empty"),
        ("M4", "aged", "deal", "hs:1", "medium", "hs:1 is old"),
        ("M7", "metric_unavailable", "team", "all", "low", "cycle is empty"),
        ("M4", "aged", "deal", "hs:2", "medium", "hs:2 is old"),
        ("M7", "metric_unavailable", "team", "all", "low", "velocity is empty")), chunk_rows)
    expected = ["M7|metric_unavailable|team|all", "M4|aged|deal|hs:1", "M7|metric_unavailable|team|all#2",
                "M4|aged|deal|hs:2", "M7|metric_unavailable|team|all#3"]
    assert idents(side) == expected == stored_idents(engine, side)
    assert side.hashes.tolist() == digest_flags.ident_hashes(expected).tolist()
    assert len(set(side.hashes.tolist())) == 5


def test_a_key_that_looks_like_a_repeat_is_numbered_like_one_by_one(engine):
    side = CurrentFlags(frame(*(("M4", "aged", "deal", key, "medium", "m") for key in ("a", "a", "a#2", "a#2"))), 3)
    expected = ["M4|aged|deal|a", "M4|aged|deal|a#2", "M4|aged|deal|a#2#2", "M4|aged|deal|a#2#3"]
    assert idents(side) == expected == stored_idents(engine, side)
    assert len(set(side.hashes.tolist())) == 4


def test_identity_hashes_are_fixed_values():
    # stored hashes must mean the same thing to the next run (and the next pandas)
    assert digest_flags.ident_hashes(["M4|aged|deal|hs:1", "é|😀"]).tolist() == [-2565355484978337263,
                                                                                -5980543669176568747]


# ----------------------------------------------------------------------------- diff


def test_new_and_resolved_counts_and_top_lines_on_a_hand_built_case(engine):
    previous = frame(
        ("M4", "past_due", "deal", "hs:1", "high", "hs:1 past due"),        # stays
        ("M4", "past_due", "deal", "hs:2", "high", "hs:2 past due"),        # resolved
        ("M4", "aged", "deal", "hs:3", "medium", "hs:3 aged"),              # resolved
        ("M2", "unqualified", "deal", "hs:4", "medium", "hs:4 unqualified"),  # resolved
        ("M7", "metric_unavailable", "team", "all", "low", "a"),            # stays (#1)
        ("M7", "metric_unavailable", "team", "all", "low", "b"),            # stays (#2)
        ("M7", "metric_unavailable", "team", "all", "low", "c"))            # resolved (#3)
    current = frame(
        ("M4", "past_due", "deal", "hs:1", "high", "hs:1 past due, 7 days later"),
        ("M4", "past_due", "deal", "hs:9", "high", "hs:9 past due"),        # new
        ("M1", "low_lead_gen", "team", "all", "high", "low lead gen"),      # new
        ("M4", "aged", "deal", "hs:1", "medium", "hs:1 aged"),              # new
        ("M7", "metric_unavailable", "team", "all", "low", "a"),
        ("M7", "metric_unavailable", "team", "all", "low", "b"))
    remember_flags(engine, "pipeline", D, previous, chunk_rows=2)
    s = remember_flags(engine, "pipeline", D + timedelta(days=7), current, top=3, chunk_rows=2)
    assert (s.total, s.previous_as_of, s.diff.new_count, s.diff.resolved_count) == (6, D, 3, 4)
    assert s.diff.new == [FlagLine("M1|low_lead_gen|team|all", "M1", "high", "low lead gen"),
                          FlagLine("M4|past_due|deal|hs:9", "M4", "high", "hs:9 past due"),
                          FlagLine("M4|aged|deal|hs:1", "M4", "medium", "hs:1 aged")]
    assert s.diff.resolved == [FlagLine("M4|past_due|deal|hs:2", "M4", "high", "hs:2 past due"),
                               FlagLine("M2|unqualified|deal|hs:4", "M2", "medium", "hs:4 unqualified"),
                               FlagLine("M4|aged|deal|hs:3", "M4", "medium", "hs:3 aged")]
    assert reference(current, previous, 3) == (3, 4, s.diff.new, s.diff.resolved)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("top", [1, 5, 40])
def test_diff_equals_the_one_by_one_algorithm_on_random_runs(engine, seed, top):
    rng = np.random.default_rng(seed)

    def run(n: int) -> pd.DataFrame:
        rules = rng.choice(["M2", "M4", "M4", "M7", "M10"], n)
        sev = rng.choice(["high", "medium", "low", "odd"], n, p=[0.3, 0.4, 0.25, 0.05])
        keys = rng.choice([f"hs:{i}" for i in range(25)] + ["all", "x#2"], n)
        return frame(*((r, "c" if r != "M7" else "unavailable", "deal", k, s, f"{r} {k} {i}")
                       for i, (r, k, s) in enumerate(zip(rules, keys, sev, strict=True))))

    previous, current = run(int(rng.integers(0, 60))), run(int(rng.integers(0, 60)))
    in_memory = flag_diff(CurrentFlags(current), CurrentFlags(previous), top)
    assert reference(current, previous, top) == (in_memory.new_count, in_memory.resolved_count, in_memory.new,
                                                 in_memory.resolved)
    remember_flags(engine, "r", D, previous, chunk_rows=7)
    stored = remember_flags(engine, "r", D + timedelta(days=1), current, top=top, chunk_rows=7).diff
    assert stored == in_memory


# ----------------------------------------------------------------------------- storage


def test_retention_keeps_what_the_next_run_and_an_older_date_need(engine):
    flags = frame(("M4", "aged", "deal", "hs:1", "medium", "m"))
    days = [D + timedelta(days=7 * i) for i in range(6)]  # d0 .. d5
    for d in days[:5]:
        remember_flags(engine, "r", d, flags)
        remember_flags(engine, "other", d, flags)
    assert stored_dates(engine, "r") == days[3:5]  # the latest and the one a same-day rerun diffs against
    assert remember_flags(engine, "r", days[4], flags).previous_as_of == days[3]  # rerun of the latest date
    # a run of an older date: its predecessor was pruned, so it has nothing to compare with ...
    assert remember_flags(engine, "r", days[1], flags).previous_as_of is None
    assert stored_dates(engine, "r") == [days[1], days[3], days[4]]
    # ... but the run of the date after it finds it, and a rerun of that date still does
    assert remember_flags(engine, "r", days[2], flags).previous_as_of == days[1]
    assert remember_flags(engine, "r", days[2], flags).previous_as_of == days[1]
    assert stored_dates(engine, "r") == [days[1], days[2], days[3], days[4]]
    # the next scheduled run diffs against the latest; then two runs are left
    assert remember_flags(engine, "r", days[5], flags).previous_as_of == days[4]
    assert stored_dates(engine, "r") == days[4:6]
    assert stored_dates(engine, "other") == days[3:5]
    with engine.connect() as conn:
        run_ids = set(conn.execute(sa.select(digest_flags.runs.c.id)).scalars())
        chunk_runs = set(conn.execute(sa.select(digest_flags.chunks.c.run_id)).scalars())
    assert chunk_runs == run_ids and len(run_ids) == 4


def test_a_run_without_flags_is_remembered(engine):
    flags = frame(("M4", "aged", "deal", "hs:1", "medium", "m"))
    remember_flags(engine, "r", D, flags)
    empty = remember_flags(engine, "r", D + timedelta(days=1), frame())
    assert (empty.total, empty.diff.new_count, empty.diff.resolved_count) == (0, 0, 1)
    after = remember_flags(engine, "r", D + timedelta(days=2), flags)
    assert (after.previous_as_of, after.diff.new_count, after.diff.resolved_count) == (D + timedelta(days=1), 1, 0)


ODD = ["plain", "quote ' and \" and `back`", "é ü ß 中文 😀 e\u0301", "new\nline\ttab\r\n", "nul\x00byte",
       "back\\slash %s %(x)s ?", "", "x" * 1000, "|#2|#", "ℵ" * 999 + "!"]


def test_chunked_save_round_trips_odd_text(engine):
    flags = frame(*(("M5", "missing_fields", "deal", f"hs:{i}{text[:20]}", "medium", text)
                    for i, text in enumerate(ODD)))
    side = CurrentFlags(flags, chunk_rows=3)
    assert digest_flags.save(engine, "odd ' report", D, side.labels, side.chunks()) == len(ODD)
    stored = digest_flags.load_previous(engine, "odd ' report", D + timedelta(days=1))
    assert stored is not None and stored.as_of == D and stored.starts == [0, 3, 6, 9]
    assert stored.hashes.tolist() == side.hashes.tolist()
    assert stored.labels == [("medium", "M5")] and stored.codes.tolist() == [0] * len(ODD)
    everything = np.arange(len(ODD))
    assert [m for _, part in stored.texts("messages", everything[::-1]) for m in part] == ODD
    assert [i for _, part in stored.texts("idents", everything) for i in part] == idents(side)
    assert [(p.tolist(), t) for p, t in stored.texts("messages", np.array([7, 1, 2]))] == [
        ([1, 2], ODD[1:3]), ([7], [ODD[7]])]


def test_an_old_state_db_still_works_and_its_last_run_is_compared(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.create_engine(url)
    digest_flags.legacy.create(old)  # the previous version's table, as it created it
    with old.begin() as conn:
        conn.execute(digest_flags.legacy.insert(), [
            {"report": "pipeline", "as_of": D - timedelta(days=7), "flag_key": "M4|aged|deal|hs:0", "rule": "M4",
             "severity": "medium", "message": "older run"},
            {"report": "pipeline", "as_of": D, "flag_key": "M4|aged|deal|hs:1", "rule": "M4", "severity": "medium",
             "message": "hs:1 aged"},
            {"report": "pipeline", "as_of": D, "flag_key": "M7|metric_unavailable|team|all#2", "rule": "M7",
             "severity": "low", "message": "second metric"},
            {"report": "pipeline", "as_of": D, "flag_key": "M7|metric_unavailable|team|all", "rule": "M7",
             "severity": "low", "message": "first metric"}])
    engine = make_engine(url)
    current = frame(("M4", "aged", "deal", "hs:1", "medium", "hs:1 aged"),
                    ("M7", "metric_unavailable", "team", "all", "low", "first metric"),
                    ("M4", "stalled", "deal", "hs:2", "medium", "hs:2 stalled"))
    s = remember_flags(engine, "pipeline", D + timedelta(days=7), current)
    assert (s.previous_as_of, s.diff.new_count, s.diff.resolved_count) == (D, 1, 1)
    assert s.diff.new == [FlagLine("M4|stalled|deal|hs:2", "M4", "medium", "hs:2 stalled")]
    assert s.diff.resolved == [FlagLine("M7|metric_unavailable|team|all#2", "M7", "low", "second metric")]
    # the next run compares with what this version stored; the old table is left as it was
    nxt = remember_flags(engine, "pipeline", D + timedelta(days=14), current.iloc[:1])
    assert (nxt.previous_as_of, nxt.diff.new_count, nxt.diff.resolved_count) == (D + timedelta(days=7), 0, 2)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(digest_flags.legacy)).scalar_one() == 4
    assert not sa.inspect(make_engine(f"sqlite:///{tmp_path / 'new.db'}")).has_table("digest_flags")


def test_messages_that_are_not_text_are_stored_as_their_str(engine):
    side = CurrentFlags(frame(*(("M4", "aged", "deal", f"hs:{i}", "medium", m) for i, m in enumerate([None, 1.5, "x"]))))
    digest_flags.save(engine, "r", D, side.labels, side.chunks())
    stored = digest_flags.load_previous(engine, "r", D + timedelta(days=1))
    assert stored is not None
    everything = np.arange(3)
    assert [m for _, part in stored.texts("messages", everything) for m in part] == ["None", "1.5", "x"]
    assert [m for _, part in side.texts("messages", everything) for m in part] == ["None", "1.5", "x"]
