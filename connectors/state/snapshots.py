"""Snapshot history (owned by the analytics work): team metrics and open deals per report and as_of.

SQLAlchemy Core with portable types only (works on SQLite and Postgres). Saving a snapshot for
a (report, as_of) that is already stored replaces it, inside the caller's transaction.

Storage grows with changes, not with runs. The open deals of a date are kept in
`snapshot_deal_parts` as columnar zlib blocks (`encode_deals`) of one of two kinds:

- "delta": only the deals whose stored values (owner, product, stage, amount, close_date)
  differ from the date stored before it, and a tombstone for every deal open then and not now;
- "full": every open deal. The first date of a report is full, and so is a date whose chain of
  deltas since the last full date would hold more rows than it has open deals (so reading one
  date never decodes more than about twice its open deals).

The open deals at date t: the last full date on or before t, then every delta after it up to t,
applied in date order. Saving a date between stored dates (a backfill, a rerun of an older
date) rewrites the next date's delta against it, so each delta always means "changes since the
date before". Part 0 of each date also keeps the ids of the deals pushed since the date before
(open at both, close_date later): the slippage's `push_count` reads only those.

Databases of earlier versions kept one `snapshot_deals` row per open deal per date. Those dates
are read as they are (as full dates); the first save of a report converts them to the compact
form (and deletes their rows) in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa

from config.snapshot_types import (
    SNAPSHOT_DEAL_COLUMNS,
    SnapshotHistory,
    SnapshotRecord,
    empty_pushes,
    empty_snapshot_deals,
)
from connectors.state.tables import (
    snapshot_deal_parts,
    snapshot_deals,
    snapshot_digests,
    snapshot_metrics,
    snapshots,
)

PART_ROWS = 250_000  # deals per stored block
_FORMAT = 1  # first byte of every block
_NO_DAY = np.iinfo(np.int32).min  # a missing close_date
_TEXT_COLUMNS = ("owner", "product", "stage")
_EPOCH = np.datetime64("1970-01-01", "D")


def _clean(v: object) -> object:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
        return None
    return v


def deals_digest(deals: pd.DataFrame) -> str:
    """sha256 naming a snapshot's deals (values, columns and order)."""
    h = hashlib.sha256("|".join(map(str, deals.columns)).encode())
    if len(deals):
        h.update(pd.util.hash_pandas_object(deals, index=False).to_numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the block codec


def _pack_texts(texts: Sequence[str]) -> bytes:
    """int32 lengths (code points) then the UTF-8 of every text, zlib level 1."""
    joined = "".join(texts)
    lengths = np.fromiter(map(len, texts), dtype="<i4", count=len(texts))
    z = zlib.compressobj(1)
    return z.compress(lengths.tobytes()) + z.compress(joined.encode("utf-8", "surrogatepass")) + z.flush()


def _unpack_texts(blob: bytes, count: int) -> list[str]:
    if count == 0:
        return []
    raw = zlib.decompress(blob)
    ends = np.cumsum(np.frombuffer(raw, dtype="<i4", count=count), dtype=np.int64).tolist()
    text = raw[4 * count:].decode("utf-8", "surrogatepass")
    return [text[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _segments(parts: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


def _read_segments(blob: bytes, start: int) -> list[bytes]:
    out, pos = [], start
    while pos < len(blob):
        (n,) = struct.unpack_from("<I", blob, pos)
        out.append(blob[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def encode_deals(frame: pd.DataFrame) -> bytes:
    """One block: `deal_id`, `present` (False = tombstone) and the stored columns, columnar.

    Layout: format byte, row count (uint32), then length-prefixed zlib segments: ids, present
    (uint8), per text column its distinct values and int32 codes (-1 = missing), amount
    (float64, NaN = missing), close_date (int32 days since 1970, int32 min = missing)."""
    n = len(frame)
    segs = [_pack_texts(frame["deal_id"].astype(str).tolist()),
            zlib.compress(frame["present"].to_numpy(dtype=np.uint8).tobytes(), 1)]
    for col in _TEXT_COLUMNS:
        codes, uniques = pd.factorize(frame[col].astype(object), use_na_sentinel=True)
        segs.append(_pack_texts([str(u) for u in uniques]))
        segs.append(zlib.compress(struct.pack("<I", len(uniques)) + codes.astype("<i4").tobytes(), 1))
    segs.append(zlib.compress(frame["amount"].to_numpy(dtype="<f8").tobytes(), 1))
    days = pd.to_datetime(frame["close_date"]).to_numpy(dtype="datetime64[D]")
    ints = np.where(np.isnat(days), _NO_DAY, (days - _EPOCH).astype(np.int64)).astype("<i4")
    segs.append(zlib.compress(ints.tobytes(), 1))
    return bytes([_FORMAT]) + struct.pack("<I", n) + _segments(segs)


def decode_deals(blob: bytes) -> pd.DataFrame:
    """The frame `encode_deals` stored (deal_id, present, owner, product, stage, amount, close_date)."""
    if not blob or blob[0] != _FORMAT:
        raise ValueError(f"snapshot block of an unknown format ({blob[:1]!r})")
    (n,) = struct.unpack_from("<I", blob, 1)
    segs = _read_segments(blob, 5)
    out: dict[str, object] = {"deal_id": pd.Series(_unpack_texts(segs[0], n), dtype=object)}
    out["present"] = np.frombuffer(zlib.decompress(segs[1]), dtype=np.uint8, count=n).astype(bool)
    for i, col in enumerate(_TEXT_COLUMNS):
        raw = zlib.decompress(segs[3 + 2 * i])
        (k,) = struct.unpack_from("<I", raw, 0)
        uniques = np.array([*_unpack_texts(segs[2 + 2 * i], k), None], dtype=object)
        codes = np.frombuffer(raw, dtype="<i4", count=n, offset=4)
        out[col] = pd.Series(uniques[codes], dtype=object)  # code -1 picks the trailing None
    out["amount"] = np.frombuffer(zlib.decompress(segs[8]), dtype="<f8", count=n).astype(float)
    ints = np.frombuffer(zlib.decompress(segs[9]), dtype="<i4", count=n).astype(np.int64)
    close = np.where(ints == _NO_DAY, np.datetime64("NaT", "D"), _EPOCH + ints.astype("timedelta64[D]"))
    out["close_date"] = close.astype("datetime64[ns]")
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- dates and states


@dataclass(frozen=True)
class _Date:
    as_of: date
    kind: str  # "full" | "delta" | "legacy" (rows in snapshot_deals)
    rows: int


def _dates(conn: sa.Connection, report: str) -> list[_Date]:
    """Every stored date of `report`, oldest first, with how its deals are kept."""
    stored = conn.execute(sa.select(snapshots.c.as_of).where(snapshots.c.report == report)
                          .order_by(snapshots.c.as_of)).scalars().all()
    p = snapshot_deal_parts.c
    kinds: dict[date, tuple[str, int]] = {}
    for as_of, kind, rows in conn.execute(sa.select(p.as_of, p.kind, sa.func.sum(p.rows)).where(p.report == report)
                                          .group_by(p.as_of, p.kind)):
        kinds[as_of] = (kind, int(rows or 0))
    return [_Date(d, *kinds.get(d, ("legacy", 0))) for d in stored]


def _normalise(deals: pd.DataFrame) -> pd.DataFrame:
    """The stored columns, one row per deal_id (the last one given), in the order given."""
    out = pd.DataFrame({
        "deal_id": deals["deal_id"].astype(str).to_numpy(dtype=object),
        "owner": deals["owner"].astype(object).where(deals["owner"].notna(), None).to_numpy(dtype=object),
        "product": deals["product"].astype(object).where(deals["product"].notna(), None).to_numpy(dtype=object),
        "stage": deals["stage"].astype(object).where(deals["stage"].notna(), None).to_numpy(dtype=object),
        "amount": pd.to_numeric(deals["amount"], errors="coerce").to_numpy(dtype=float),
        "close_date": pd.to_datetime(deals["close_date"]).to_numpy(dtype="datetime64[D]").astype("datetime64[ns]"),
    })
    if not pd.Index(out["deal_id"]).is_unique:
        out = out.drop_duplicates("deal_id", keep="last")
    return out.reset_index(drop=True)


def _read_date(conn: sa.Connection, report: str, d: _Date) -> pd.DataFrame:
    """The block rows of one date (with `present`): a delta, a full date, or a legacy date's rows."""
    if d.kind == "legacy":
        s = snapshot_deals.c
        rows = conn.execute(sa.select(*[s[c] for c in SNAPSHOT_DEAL_COLUMNS])
                            .where(s.report == report, s.as_of == d.as_of)).all()
        cols = list(zip(*rows, strict=True)) if rows else [[] for _ in SNAPSHOT_DEAL_COLUMNS]
        frame = _normalise(pd.DataFrame({c: pd.Series(list(v), dtype=object)
                                         for c, v in zip(SNAPSHOT_DEAL_COLUMNS, cols, strict=True)}))
        frame.insert(1, "present", np.ones(len(frame), dtype=bool))
        return frame
    p = snapshot_deal_parts.c
    blobs = conn.execute(sa.select(p.data).where(p.report == report, p.as_of == d.as_of).order_by(p.part)).scalars()
    parts = [decode_deals(b) for b in blobs]
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _state(conn: sa.Connection, report: str, dates: list[_Date], at: date) -> pd.DataFrame:
    """The open deals of the stored date `at` (SNAPSHOT_DEAL_COLUMNS, one row per deal)."""
    i = next(k for k, d in enumerate(dates) if d.as_of == at)
    j = max(k for k in range(i + 1) if dates[k].kind != "delta" or k == 0)
    frames = [_read_date(conn, report, dates[k]) for k in range(j, i + 1)]
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if len(frames) > 1:
        rows = rows.drop_duplicates("deal_id", keep="last")
    rows = rows[rows["present"].to_numpy(dtype=bool)]
    return rows[list(SNAPSHOT_DEAL_COLUMNS)].reset_index(drop=True)


def _same(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    missing_x, missing_y = pd.isna(x), pd.isna(y)
    with np.errstate(invalid="ignore"):
        eq = np.asarray(x == y, dtype=bool)
    return (eq & ~missing_x & ~missing_y) | (missing_x & missing_y)


def diff_deals(old: pd.DataFrame | None, new: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(delta rows turning `old` into `new`, ids pushed: open at both with a later close_date).

    Both have one row per deal_id. Rows: the deals of `new` that are not in `old` or differ in a
    stored column, then a tombstone (present False) for every deal of `old` not in `new`."""
    if old is None:
        rows = new.copy()
        rows.insert(1, "present", np.ones(len(rows), dtype=bool))
        return rows, []
    pos = pd.Index(old["deal_id"].to_numpy(dtype=object)).get_indexer(new["deal_id"].to_numpy(dtype=object))
    found = pos >= 0
    at = np.where(found, pos, 0)
    changed = ~found
    if len(old):
        for c in ("owner", "product", "stage", "amount", "close_date"):
            changed |= found & ~_same(old[c].to_numpy()[at], new[c].to_numpy())
        old_close = old["close_date"].to_numpy(dtype="datetime64[ns]")[at]
    else:
        old_close = np.full(len(new), np.datetime64("NaT"), dtype="datetime64[ns]")
    new_close = new["close_date"].to_numpy(dtype="datetime64[ns]")
    pushed = found & ~np.isnat(old_close) & ~np.isnat(new_close) & (new_close > old_close)
    kept = np.zeros(len(old), dtype=bool)
    kept[pos[found]] = True
    gone = old.loc[~kept, ["deal_id"]]
    rows = new[changed].copy()
    rows.insert(1, "present", np.ones(len(rows), dtype=bool))
    tombs = pd.DataFrame({"deal_id": gone["deal_id"].to_numpy(dtype=object), "present": np.zeros(len(gone), bool),
                          "owner": None, "product": None, "stage": None, "amount": np.nan,
                          "close_date": np.full(len(gone), np.datetime64("NaT"), dtype="datetime64[ns]")})
    for c in ("owner", "product", "stage"):
        tombs[c] = tombs[c].astype(object)
    out = pd.concat([rows, tombs], ignore_index=True) if len(tombs) else rows.reset_index(drop=True)
    return out, new["deal_id"].to_numpy(dtype=object)[pushed].tolist()


def _insert(conn: sa.Connection, report: str, as_of: date, kind: str, rows: pd.DataFrame, pushes: list[str]) -> None:
    starts = range(0, max(len(rows), 1), PART_ROWS)
    conn.execute(snapshot_deal_parts.insert(), [
        {"report": report, "as_of": as_of, "part": k, "kind": kind, "rows": len(rows.iloc[s:s + PART_ROWS]),
         "data": encode_deals(rows.iloc[s:s + PART_ROWS]),
         "pushes": _pack_texts([str(x) for x in pushes]) + struct.pack("<I", len(pushes)) if k == 0 else None}
        for k, s in enumerate(starts)])


def _unpack_pushes(blob: bytes | None) -> list[str]:
    if not blob:
        return []
    (n,) = struct.unpack_from("<I", blob, len(blob) - 4)
    return _unpack_texts(blob[:-4], n)


def _delete_parts(conn: sa.Connection, report: str, as_of: date) -> None:
    p = snapshot_deal_parts.c
    conn.execute(sa.delete(snapshot_deal_parts).where(p.report == report, p.as_of == as_of))


def _chain_rows(dates: list[_Date], upto: int) -> int:
    """Rows of the deltas after the last full (or legacy) date, up to and including dates[upto]."""
    total = 0
    for k in range(upto, -1, -1):
        if dates[k].kind != "delta":
            break
        total += dates[k].rows
    return total


def _write(conn: sa.Connection, report: str, dates: list[_Date], as_of: date, deals: pd.DataFrame) -> None:
    """Store the open deals of `as_of` (replacing what it had) and re-base the date after it."""
    new = _normalise(deals)
    others = [d for d in dates if d.as_of != as_of]
    prev = max((k for k, d in enumerate(others) if d.as_of < as_of), default=None)
    nxt = min((k for k, d in enumerate(others) if d.as_of > as_of), default=None)
    next_state = _state(conn, report, dates, others[nxt].as_of) if nxt is not None else None  # before any change
    old = _state(conn, report, others, others[prev].as_of) if prev is not None else None
    _delete_parts(conn, report, as_of)
    conn.execute(sa.delete(snapshot_deals).where(snapshot_deals.c.report == report, snapshot_deals.c.as_of == as_of))
    rows, pushes = diff_deals(old, new)
    full = old is None or _chain_rows(others, prev) + len(rows) > len(new)
    _insert(conn, report, as_of, "full" if full else "delta", new.assign(present=True)[rows.columns] if full else rows,
            pushes)
    if next_state is not None:
        after = others[nxt]
        rows2, pushes2 = diff_deals(new, next_state)
        _delete_parts(conn, report, after.as_of)
        if after.kind == "delta":
            _insert(conn, report, after.as_of, "delta", rows2, pushes2)
        else:  # a full (or legacy) date stays whole; only its pushes are re-based
            _insert(conn, report, after.as_of, "full", next_state.assign(present=True)[rows2.columns], pushes2)
            conn.execute(sa.delete(snapshot_deals).where(snapshot_deals.c.report == report,
                                                         snapshot_deals.c.as_of == after.as_of))


def _migrate_legacy(conn: sa.Connection, report: str, dates: list[_Date]) -> list[_Date]:
    """Convert the dates an earlier version stored row by row to blocks, oldest first."""
    if not any(d.kind == "legacy" for d in dates):
        return dates
    previous: pd.DataFrame | None = None
    for k, d in enumerate(dates):
        state = _state(conn, report, dates, d.as_of)
        if d.kind == "legacy":
            rows, pushes = diff_deals(previous, state)
            full = previous is None or _chain_rows(dates, k - 1) + len(rows) > len(state)
            _insert(conn, report, d.as_of, "full" if full else "delta",
                    state.assign(present=True)[rows.columns] if full else rows, pushes)
            conn.execute(sa.delete(snapshot_deals).where(snapshot_deals.c.report == report,
                                                         snapshot_deals.c.as_of == d.as_of))
            dates = [*dates[:k], _Date(d.as_of, "full" if full else "delta", len(state) if full else len(rows)),
                     *dates[k + 1:]]
        previous = state
    return dates


# ----------------------------------------------------------------------------- public


def save_snapshot(conn: sa.Connection, report: str, record: SnapshotRecord) -> None:
    """Store (or replace) the snapshot of `report` at `record.as_of` in the caller's transaction.

    Deals identical to those already stored for that date (a rerun where nothing changed) are kept
    as they are; the metrics and the save time are always written.
    """
    as_of = record.as_of
    digest = deals_digest(record.deals)
    where = (snapshot_digests.c.report == report, snapshot_digests.c.as_of == as_of)
    stored = conn.execute(sa.select(snapshot_digests.c.deals_sha256).where(*where)).scalar_one_or_none()
    same_deals = stored == digest and conn.execute(
        sa.select(snapshots.c.as_of).where(snapshots.c.report == report, snapshots.c.as_of == as_of)
    ).first() is not None
    if not same_deals:
        _write(conn, report, _migrate_legacy(conn, report, _dates(conn, report)), as_of, record.deals)
        conn.execute(sa.delete(snapshot_digests).where(*where))
        conn.execute(snapshot_digests.insert().values(report=report, as_of=as_of, deals_sha256=digest))
    for table in (snapshot_metrics, snapshots):
        conn.execute(sa.delete(table).where(table.c.report == report, table.c.as_of == as_of))
    conn.execute(snapshots.insert().values(report=report, as_of=as_of, saved_at=datetime.now(UTC)))
    rows = [{"report": report, "as_of": as_of, "metric": m, "value": _clean(None if v is None else float(v))}
            for m, v in record.metrics.items()]
    if rows:
        conn.execute(snapshot_metrics.insert(), rows)


def load_history(engine: sa.Engine, report: str, before_or_on: date) -> SnapshotHistory:
    """Team metrics of every snapshot on or before `before_or_on`; the open deals of the latest
    snapshot strictly before it; and the pushes seen between stored snapshots up to that one."""
    with engine.connect() as conn:
        m = conn.execute(
            sa.select(snapshot_metrics.c.as_of, snapshot_metrics.c.metric, snapshot_metrics.c.value)
            .where(snapshot_metrics.c.report == report, snapshot_metrics.c.as_of <= before_or_on)
            .order_by(snapshot_metrics.c.as_of, snapshot_metrics.c.metric)
        ).all()
        dates = _dates(conn, report)
        prev = max((d.as_of for d in dates if d.as_of < before_or_on), default=None)
        deals = empty_snapshot_deals()
        pushes = empty_pushes()
        if prev is not None:
            state = _state(conn, report, dates, prev)
            if len(state):
                deals = state.sort_values("deal_id", kind="stable").reset_index(drop=True)
                deals["close_date"] = deals["close_date"].astype("datetime64[ns]")
            pushes = _pushes(conn, report, [d for d in dates if d.as_of <= prev])
    metrics = pd.DataFrame({
        "as_of": pd.Series([r[0] for r in m], dtype=object),
        "metric": pd.Series([r[1] for r in m], dtype=object),
        "value": pd.Series([float("nan") if r[2] is None else float(r[2]) for r in m], dtype=float),
    })
    return SnapshotHistory(metrics=metrics, previous_as_of=prev, previous_deals=deals, pushes=pushes)


def _pushes(conn: sa.Connection, report: str, dates: list[_Date]) -> pd.DataFrame:
    """(deal_id, as_of) of every push stored for these dates (legacy dates: computed from their rows)."""
    p = snapshot_deal_parts.c
    stored = dict(conn.execute(sa.select(p.as_of, p.pushes).where(p.report == report, p.part == 0)).all())
    ids: list[str] = []
    days: list[date] = []
    for k, d in enumerate(dates):
        if d.kind == "legacy":
            if k == 0:
                continue
            got = diff_deals(_state(conn, report, dates, dates[k - 1].as_of), _state(conn, report, dates, d.as_of))[1]
        else:
            got = _unpack_pushes(stored.get(d.as_of))
        ids += got
        days += [d.as_of] * len(got)
    return pd.DataFrame({"deal_id": pd.Series(ids, dtype=object), "as_of": pd.Series(days, dtype=object)})


def stored_dates(engine: sa.Engine, report: str) -> list[date]:
    """The as_of dates stored for `report`, oldest first."""
    with engine.connect() as conn:
        return list(conn.execute(sa.select(snapshots.c.as_of).where(snapshots.c.report == report)
                                 .order_by(snapshots.c.as_of)).scalars())


def storage_bytes(engine: sa.Engine, report: str) -> int:
    """Bytes of stored deal blocks of `report` (for the benchmark)."""
    p = snapshot_deal_parts.c
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.sum(sa.func.length(p.data) + sa.func.coalesce(
            sa.func.length(p.pushes), 0))).where(p.report == report)).scalar() or 0)


__all__ = ["decode_deals", "deals_digest", "diff_deals", "encode_deals", "load_history", "save_snapshot",
           "snapshot_deal_parts", "snapshot_deals", "snapshot_digests", "snapshot_metrics", "snapshots",
           "storage_bytes", "stored_dates"]


def history_stamp(engine: sa.Engine, report: str, as_of: date) -> str:
    """A digest of the snapshots a run at `as_of` reads and leaves: each date before it with when
    it was saved and its deals' digest (what `load_history` gives the analytics: they drop the
    stored metrics of their own date, transforms.analytics._trends), and whether `as_of`'s own is
    stored, with its deals' digest (the snapshot such a run saves)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(snapshots.c.as_of, snapshots.c.saved_at, snapshot_digests.c.deals_sha256)
            .select_from(snapshots.outerjoin(snapshot_digests, sa.and_(
                snapshot_digests.c.report == snapshots.c.report, snapshot_digests.c.as_of == snapshots.c.as_of)))
            .where(snapshots.c.report == report, snapshots.c.as_of <= as_of)
            .order_by(snapshots.c.as_of)).all()
    stamp = [[str(d), str(saved) if d < as_of else "", str(sha)] for d, saved, sha in rows]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()
