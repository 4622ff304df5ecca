"""Each run's flags, remembered in the state database so the next digest can say new / resolved.

Storage: `digest_flag_runs` has one row per stored run (report, as_of, flag count and the
(severity, rule) labels its flags use); `digest_flag_chunks` one row per chunk of a run's flags
(in flag order): the 64-bit identity hashes (int64), each flag's label index (int16, zlib) and
the identities and messages (zlib of int32 lengths + UTF-8 text), ~25 bytes a flag. A diff reads
only hashes and label indexes; the texts of the few flags a digest shows are read per chunk.

Retention: saving the run of `as_of` keeps, per report, that run and the latest run before it
(a rerun of the same as_of diffs against it), the latest run and the latest run before that
(the next scheduled run diffs against the latest, a rerun of the latest as_of against the one
before it), and deletes the rest: 2 runs for scheduled runs, at most 4 after a run of an older
date (a run of the date after it then finds it). A run of an older date whose predecessor was
pruned compares with the latest earlier run still stored, or with none ("first run").

The previous version's table `digest_flags` (a row per flag, never pruned) is no longer written;
when a report has no stored run before as_of, its latest run before as_of there is read instead,
so the first digest after an upgrade still compares. It can be dropped once every report ran.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import NamedTuple

import numpy as np
import pandas as pd
import sqlalchemy as sa

from connectors.state.tables import digest_flag_chunks as chunks
from connectors.state.tables import digest_flag_runs as runs

Label = tuple[str, str]  # severity, rule
HASH_KEY = "0123456789123456"  # SipHash key of the identity hashes: changing it makes every flag "new" once

# the previous version's table, read only (not in `metadata`: never created)
legacy = sa.Table(
    "digest_flags",
    sa.MetaData(),
    sa.Column("report", sa.String(200), primary_key=True),
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("flag_key", sa.String(1000), primary_key=True),
    sa.Column("rule", sa.String(20), nullable=False),
    sa.Column("severity", sa.String(20), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)


class Chunk(NamedTuple):
    """Consecutive flags of a run: identity hashes, label indexes, identities and messages (texts,
    or bytes from `pack_texts`)."""

    hashes: np.ndarray
    codes: np.ndarray
    idents: Sequence[str] | bytes
    messages: Sequence[object] | bytes  # str(value) is stored


def ident_hashes(idents: Sequence[str]) -> np.ndarray:
    """64-bit hashes (int64) of identity strings: SipHash-2-4 of the UTF-8 bytes (pandas'
    `hash_array`, stable since pandas 0.20)."""
    values = np.asarray(idents, dtype=object) if len(idents) else np.zeros(0, dtype=object)
    try:
        out = pd.util.hash_array(values, encoding="utf8", hash_key=HASH_KEY, categorize=False)
    except UnicodeEncodeError:  # lone surrogates
        values = np.array([s.encode("utf-8", "surrogatepass") for s in values] or [], dtype=object)
        out = pd.util.hash_array(values, encoding="utf8", hash_key=HASH_KEY, categorize=False)
    return out.view(np.int64)


def label_codes(severity: np.ndarray, rule: np.ndarray) -> tuple[np.ndarray, list[Label]]:
    """Each flag's index into the list of distinct (severity, rule) labels, and that list."""
    if len(severity) == 0:
        return np.zeros(0, dtype=np.int16), []
    s_codes, s_uniq = pd.factorize(np.asarray(severity, dtype=object), use_na_sentinel=False)
    r_codes, r_uniq = pd.factorize(np.asarray(rule, dtype=object), use_na_sentinel=False)
    codes, pairs = pd.factorize(s_codes.astype(np.int64) * len(r_uniq) + r_codes)
    if len(pairs) > np.iinfo(np.int16).max:
        raise ValueError(f"{len(pairs)} distinct (severity, rule) pairs in the flags: at most 32767 are supported")
    labels = [(str(s_uniq[p // len(r_uniq)]), str(r_uniq[p % len(r_uniq)])) for p in pairs]
    return codes.astype(np.int16), labels


def split_by_chunk(positions: np.ndarray, starts: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(chunk index, its positions) for sorted `positions` and the chunks' sorted first positions."""
    bounds = np.searchsorted(positions, np.asarray([*starts[1:]], dtype=np.int64))
    for k, part in enumerate(np.split(positions, bounds)):
        if len(part):
            yield k, part


@dataclass
class StoredRun:
    """A stored run's flags: every hash and label index in memory, texts read per chunk on demand."""

    as_of: date
    labels: list[Label]
    hashes: np.ndarray  # int64, one per flag, in flag order
    codes: np.ndarray  # int16 index into labels
    starts: list[int]  # first position of each chunk
    read: Callable[[str, int], list[str]]  # (column "idents" | "messages", chunk index) -> its texts

    def texts(self, column: str, positions: np.ndarray) -> Iterator[tuple[np.ndarray, list[str]]]:
        """(positions, texts) chunk by chunk for `positions` (any order; yielded sorted)."""
        positions = np.sort(np.asarray(positions, dtype=np.int64))
        for k, part in split_by_chunk(positions, self.starts):
            everything = self.read(column, k)
            yield part, [everything[i] for i in (part - self.starts[k]).tolist()]


def load_previous(engine: sa.Engine, report: str, as_of: date) -> StoredRun | None:
    """The flags of `report`'s latest stored run with an as_of before `as_of` (None: no such run)."""
    with engine.connect() as conn:
        run = conn.execute(sa.select(runs.c.id, runs.c.as_of, runs.c.labels)
                           .where(runs.c.report == report, runs.c.as_of < as_of)
                           .order_by(runs.c.as_of.desc()).limit(1)).first()
        if run is None:
            return _legacy_previous(conn, report, as_of)
        rows = conn.execute(sa.select(chunks.c.start, chunks.c.hashes, chunks.c.codes)
                            .where(chunks.c.run_id == run.id).order_by(chunks.c.start)).all()
    hashes = [np.frombuffer(r.hashes, dtype="<i8") for r in rows]
    codes = [np.frombuffer(zlib.decompress(r.codes), dtype="<i2") for r in rows]
    starts = [int(r.start) for r in rows]
    run_id = run.id

    def read(column: str, k: int) -> list[str]:
        col = chunks.c.idents if column == "idents" else chunks.c.messages
        with engine.connect() as c:
            blob, count = c.execute(sa.select(col, chunks.c.flags).where(
                chunks.c.run_id == run_id, chunks.c.start == starts[k])).one()
        return _unpack(blob, count)

    return StoredRun(run.as_of, [(str(s), str(r)) for s, r in json.loads(run.labels)],
                     np.concatenate(hashes).astype(np.int64) if rows else np.zeros(0, dtype=np.int64),
                     np.concatenate(codes).astype(np.int16) if rows else np.zeros(0, dtype=np.int16), starts, read)


def _legacy_previous(conn: sa.Connection, report: str, as_of: date) -> StoredRun | None:
    """The latest run before `as_of` in the previous version's table, if the database has it."""
    if not sa.inspect(conn).has_table(legacy.name):
        return None
    prev = conn.execute(sa.select(sa.func.max(legacy.c.as_of)).where(
        legacy.c.report == report, legacy.c.as_of < as_of)).scalar_one_or_none()
    if prev is None:
        return None
    rows = conn.execute(sa.select(legacy.c.flag_key, legacy.c.rule, legacy.c.severity, legacy.c.message)
                        .where(legacy.c.report == report, legacy.c.as_of == prev)).all()
    idents, rules, severities, messages = ([r[i] for r in rows] for i in range(4))
    codes, labels = label_codes(np.asarray(severities, dtype=object), np.asarray(rules, dtype=object))
    return StoredRun(prev, labels, ident_hashes(idents), codes, [0],
                     lambda column, k: idents if column == "idents" else messages)


def save(engine: sa.Engine, report: str, as_of: date, labels: Sequence[Label], flags: Iterable[Chunk]) -> int:
    """Store this run's flags (replacing a stored run of the same report and as_of) and prune the
    report's older runs (see the module docstring). Returns the number stored.

    One chunk at a time is packed and inserted (memory bounded by a chunk), in one transaction."""
    with engine.begin() as conn:
        _delete(conn, sa.and_(runs.c.report == report, runs.c.as_of == as_of))
        run_id = conn.execute(runs.insert().values(
            report=report, as_of=as_of, flags=0, labels=json.dumps([list(x) for x in labels]))).inserted_primary_key[0]
        start = 0
        for chunk in flags:
            n = len(chunk.hashes)
            if n == 0:
                continue
            conn.execute(chunks.insert(), [{
                "run_id": run_id, "start": start, "flags": n,
                "hashes": np.ascontiguousarray(chunk.hashes, dtype="<i8").tobytes(),
                "codes": zlib.compress(np.ascontiguousarray(chunk.codes, dtype="<i2").tobytes(), 1),
                "idents": _packed(chunk.idents), "messages": _packed(chunk.messages)}])
            start += n
        conn.execute(runs.update().where(runs.c.id == run_id).values(flags=start))
        _prune(conn, report, as_of)
    return start


def _prune(conn: sa.Connection, report: str, as_of: date) -> None:
    dates = sorted(conn.execute(sa.select(runs.c.as_of).where(runs.c.report == report)).scalars())

    def before(d: date) -> date | None:
        return max((x for x in dates if x < d), default=None)

    keep = {as_of, before(as_of), dates[-1], before(dates[-1])}
    drop = [d for d in dates if d not in keep]
    if drop:
        _delete(conn, sa.and_(runs.c.report == report, runs.c.as_of.in_(drop)))


def _delete(conn: sa.Connection, which: sa.ColumnElement[bool]) -> None:
    ids = list(conn.execute(sa.select(runs.c.id).where(which)).scalars())
    if ids:
        conn.execute(sa.delete(chunks).where(chunks.c.run_id.in_(ids)))
        conn.execute(sa.delete(runs).where(runs.c.id.in_(ids)))


def _packed(texts: Sequence[object] | bytes) -> bytes:
    return texts if isinstance(texts, bytes) else pack_texts(texts)


def pack_texts(texts: Sequence[object]) -> bytes:
    """Texts as stored: zlib(int32 lengths in code points, then the UTF-8 text of every string).
    Values that are not strings are stored as str(value)."""
    try:
        joined = "".join(texts)  # type: ignore[arg-type]
    except TypeError:
        texts = [str(t) for t in texts]
        joined = "".join(texts)
    lengths = np.fromiter(map(len, texts), dtype="<i4", count=len(texts))  # type: ignore[arg-type]
    z = zlib.compressobj(1)
    return z.compress(lengths.tobytes()) + z.compress(joined.encode("utf-8", "surrogatepass")) + z.flush()


def _unpack(blob: bytes, count: int) -> list[str]:
    raw = zlib.decompress(blob)
    ends = np.cumsum(np.frombuffer(raw, dtype="<i4", count=count), dtype=np.int64).tolist()
    text = raw[4 * count:].decode("utf-8", "surrogatepass")
    return [text[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
