"""DataFrames as plain numpy arrays and a JSON manifest: a format that cannot run code when read.

`dump(frames)` returns the bytes of an uncompressed .npz (numpy's zip of .npy arrays) holding only
numbers, booleans, dates and UTF-8 text; `load(data)` reads it with `allow_pickle=False`. Object
columns (text with missing values, or the mixed cells of a raw export) are stored cell by cell as
a type code plus the value in a typed array. A value of any other type raises `Unsupported`: the
caller then keeps nothing (a miss next time), never a lossy copy.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype

NONE, STR, INT, FLOAT, BOOL, TIMESTAMP, DATETIME, DATE, NAT, TIME = range(10)
_EPOCH = dt.datetime(1970, 1, 1)
_US = dt.timedelta(microseconds=1)
_INT64 = (-(2**63), 2**63 - 1)


class Unsupported(TypeError):
    """A value or dtype this format does not store exactly."""


def _code(v: Any) -> int:
    t = type(v)
    if t is str:
        return STR
    if v is None:
        return NONE
    if t is bool or t is np.bool_:
        return BOOL
    if t is int or isinstance(v, np.integer):
        if not _INT64[0] <= int(v) <= _INT64[1]:
            raise Unsupported(f"integer {v} does not fit 64 bits")
        return INT
    if t is float or isinstance(v, np.floating):
        return FLOAT
    if t is pd.Timestamp:
        if v.tzinfo is not None:
            raise Unsupported("time-zone aware timestamp in an object column")
        return TIMESTAMP
    if v is pd.NaT:
        return NAT
    if t is dt.datetime:
        if v.tzinfo is not None:
            raise Unsupported("time-zone aware datetime in an object column")
        return DATETIME
    if t is dt.date:
        return DATE
    if t is dt.time and v.tzinfo is None:
        return TIME
    if isinstance(v, str):  # numpy str_ and other subclasses: their text
        return STR
    raise Unsupported(f"a {t.__name__} value")


def _int_of(code: int, v: Any) -> int:
    if code in (INT, BOOL):
        return int(v)
    if code == TIMESTAMP:
        return v.value
    if code == DATETIME:
        return (v - _EPOCH) // _US
    if code == DATE:
        return v.toordinal()
    if code == TIME:
        return ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    return 0


def _missing_codes(values: np.ndarray, codes: np.ndarray, missing: np.ndarray) -> None:
    """The codes of a text column's missing cells (`missing`): None, NaN and NaT by their type (C
    loops over the cells), anything else cell by cell."""
    none = np.asarray(values[missing] == None, dtype=bool)  # noqa: E711 - elementwise, in C: the usual gap
    codes[missing[none]] = NONE
    rest = missing[~none]
    if len(rest):
        kinds, types = pd.factorize(np.frompyfunc(type, 1, 1)(values[rest]))
        by_type = np.array([FLOAT if t is float or issubclass(t, np.floating) else NAT if t is type(pd.NaT)
                            else 255 for t in types.tolist()], dtype=np.uint8)
        codes[rest] = by_type[kinds]
        other = rest[codes[rest] == 255]
        codes[other] = [_code(v) for v in values[other]]


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
    """Each cell's type code, and the text cells' numbers (first seen first) and distinct texts.
    A text column (the usual case) is factorized once, without a Python call per cell: its
    missing cells are the ones factorize leaves out (pandas' own notion of missing, as pd.isna)."""
    if infer_dtype(values, skipna=True) in ("string", "empty"):
        ids, distinct = pd.factorize(values)
        codes = np.full(len(values), STR, dtype=np.uint8)
        missing = np.flatnonzero(ids < 0)
        if len(missing):
            _missing_codes(values, codes, missing)
            ids = ids[ids >= 0]
        return codes, ids, distinct
    codes = np.fromiter((_code(v) for v in values), dtype=np.uint8, count=len(values))
    ids, distinct = pd.factorize(values[codes == STR])  # (a str subclass equals its text: stored as that text)
    return codes, ids, distinct


def _encode_objects(values: np.ndarray, key: str, arrays: dict[str, np.ndarray]) -> None:
    codes, texts, distinct = _codes(values)
    is_str = codes == STR
    # each distinct text once, and per text cell the int32 number of its text (rows share their text again
    # when read: a column of a few owners over a million rows is a few strings, not a million)
    arrays[f"{key}.idx"] = texts.astype(np.int32)
    strings = distinct.tolist()  # str or a subclass (numpy str_): joined and encoded as their text
    text = "\x00".join(strings)
    if strings and text.count("\x00") != len(strings) - 1:  # a NUL inside a value: lengths instead
        encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
        arrays[f"{key}.len"] = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        arrays[f"{key}.txt"] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    else:
        arrays[f"{key}.txt"] = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    numeric = ~is_str & (codes != NONE) & (codes != NAT)
    cells, kinds = values[numeric], codes[numeric]
    arrays[f"{key}.code"] = codes
    arrays[f"{key}.int"] = np.array([_int_of(c, v) for v, c in zip(cells, kinds, strict=True) if c != FLOAT],
                                    dtype=np.int64)
    arrays[f"{key}.flt"] = np.array([float(v) for v, c in zip(cells, kinds, strict=True) if c == FLOAT],
                                    dtype=np.float64)


def _decode_objects(key: str, arrays: Any, n: int) -> np.ndarray:
    codes = arrays[f"{key}.code"]
    if codes.shape != (n,) or codes.dtype != np.uint8 or (len(codes) and codes.max() > TIME):
        raise ValueError(f"{key}: bad type codes")
    raw = arrays[f"{key}.txt"].tobytes()
    is_str = codes == STR
    idx = arrays[f"{key}.idx"]
    if idx.shape != (int(is_str.sum()),) or idx.dtype != np.int32:
        raise ValueError(f"{key}: bad text numbers")
    count = int(idx.max()) + 1 if len(idx) else 0
    if len(idx) and idx.min() < 0:
        raise ValueError(f"{key}: bad text numbers")
    if f"{key}.len" in arrays.files:
        lengths = arrays[f"{key}.len"]
        ends = np.cumsum(lengths)
        if len(lengths) != count or (len(ends) and ends[-1] != len(raw)):
            raise ValueError(f"{key}: bad text lengths")
        strings = [raw[a:b].decode("utf-8", "surrogatepass") for a, b in zip(ends - lengths, ends, strict=True)]
    else:
        strings = raw.decode("utf-8", "surrogatepass").split("\x00") if count else []
    if len(strings) != count:
        raise ValueError(f"{key}: {len(strings)} texts for {count} cells")
    texts = np.empty(count, dtype=object)
    texts[:] = strings
    if len(idx) == n:  # every cell text (the usual column): one take, nothing else to place
        if len(arrays[f"{key}.flt"]) or len(arrays[f"{key}.int"]):
            raise ValueError(f"{key}: values and cells differ in number")
        return texts[idx]
    out = np.empty(n, dtype=object)  # (cells start as None)
    out[is_str] = texts[idx]
    out[codes == NAT] = pd.NaT
    flts, ints = arrays[f"{key}.flt"], arrays[f"{key}.int"]
    at_float = codes == FLOAT
    at_int = ~is_str & (codes != NONE) & (codes != NAT) & ~at_float  # in order, the cells `ints` holds
    if len(flts) != int(at_float.sum()) or len(ints) != int(at_int.sum()):
        raise ValueError(f"{key}: values and cells differ in number")
    out[at_float] = flts.tolist()
    plain = codes[at_int] == INT
    where = np.flatnonzero(at_int)
    out[where[plain]] = ints[plain].tolist()
    for i, c, v in zip(where[~plain].tolist(), codes[where[~plain]].tolist(), ints[~plain].tolist(), strict=True):
        out[i] = (bool(v) if c == BOOL else pd.Timestamp(v) if c == TIMESTAMP
                  else _EPOCH + dt.timedelta(microseconds=v) if c == DATETIME
                  else dt.date.fromordinal(v) if c == DATE
                  else (dt.datetime.min + dt.timedelta(microseconds=v)).time())
    return out


def _dtype_meta(dtype: Any) -> dict[str, Any]:
    if isinstance(dtype, pd.StringDtype):
        return {"kind": "string", "storage": dtype.storage, "na": "nan" if dtype.na_value is not pd.NA else "NA"}
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        return {"kind": "object"}
    if isinstance(dtype, np.dtype) and dtype.kind in "biufmM" and not dtype.hasobject:
        return {"kind": "numpy", "dtype": dtype.str}
    raise Unsupported(f"dtype {dtype}")


def _label(value: Any) -> Any:
    if isinstance(value, str | int) and not isinstance(value, bool):
        return value
    raise Unsupported(f"column label {value!r}")


def _encode_frame(frame: pd.DataFrame, f: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    index = frame.index
    meta: dict[str, Any] = {"rows": len(frame), "labels": [_label(c) for c in frame.columns],
                            "label_dtype": _dtype_meta(frame.columns.dtype), "columns": []}
    if isinstance(index, pd.RangeIndex):
        meta["index"] = [index.start, index.stop, index.step]
    else:
        meta["index"] = None
        meta["index_dtype"] = _dtype_meta(index.dtype)
        _encode_values(index.to_numpy(dtype=object if index.dtype.kind == "O" else None), meta["index_dtype"],
                       f"f{f}.index", arrays)
    for i in range(frame.shape[1]):
        col = frame.iloc[:, i]
        dmeta = _dtype_meta(col.dtype)
        meta["columns"].append(dmeta)
        values = col.to_numpy(dtype=object) if dmeta["kind"] != "numpy" else col.to_numpy()
        _encode_values(values, dmeta, f"f{f}.c{i}", arrays)
    return meta


def _encode_values(values: np.ndarray, dmeta: dict[str, Any], key: str, arrays: dict[str, np.ndarray]) -> None:
    if dmeta["kind"] == "numpy":
        arrays[key] = np.ascontiguousarray(values)
    else:
        _encode_objects(values, key, arrays)


def _decode_values(dmeta: dict[str, Any], key: str, arrays: Any, n: int) -> Any:
    if dmeta["kind"] == "numpy":
        values = arrays[key]
        if values.shape != (n,) or values.dtype.str != dmeta["dtype"]:
            raise ValueError(f"{key}: shape or dtype differs from the manifest")
        return values
    values = _decode_objects(key, arrays, n)
    if dmeta["kind"] == "string":
        return pd.array(values, dtype=_pandas_dtype(dmeta))
    return values


def _decode_frame(meta: dict[str, Any], f: int, arrays: Any,
                  patch: tuple[np.ndarray, pd.DataFrame, int] | None = None) -> pd.DataFrame:
    n = int(meta["rows"])
    if patch is not None:
        return _patched_frame(meta, f, arrays, *patch)
    labels = meta["labels"]
    if len(labels) != len(meta["columns"]):
        raise ValueError("labels and columns differ in number")
    if meta["index"] is not None:
        index: pd.Index = pd.RangeIndex(*meta["index"])
    else:
        index = pd.Index(_decode_values(meta["index_dtype"], f"f{f}.index", arrays, n))
    if len(index) != n:
        raise ValueError("index length differs from the rows")
    data = {i: pd.Series(_decode_values(d, f"f{f}.c{i}", arrays, n), index=index, copy=False,
                         dtype=object if d["kind"] == "object" else None)
            for i, d in enumerate(meta["columns"])}
    frame = pd.DataFrame(data, index=index)
    frame.columns = pd.Index(labels, dtype=_pandas_dtype(meta["label_dtype"]))
    return frame


def _patched_frame(meta: dict[str, Any], f: int, arrays: Any, positions: np.ndarray,
                   added: pd.DataFrame, rows: int) -> pd.DataFrame:
    """Row i of the result is row `positions[i]` of the stored frame (of `rows` rows) followed by
    `added`, built a column at a time (a stored column is released once taken from). The stored
    frame must have a plain row index and the same column labels as `added`."""
    n = int(meta["rows"])
    labels = meta["labels"]
    if n != rows or meta["index"] != [0, n, 1] or len(labels) != len(meta["columns"]) or list(added.columns) != labels:
        raise ValueError("a patch applies only to a frame with a plain index and the same columns")
    if positions.ndim != 1 or (len(positions) and (positions.min() < 0 or positions.max() >= n + len(added))):
        raise ValueError("patch positions out of range")
    out = {}
    for i, d in enumerate(meta["columns"]):
        stored = pd.Series(_decode_values(d, f"f{f}.c{i}", arrays, n), copy=False,
                           dtype=object if d["kind"] == "object" else None)
        both = pd.concat([stored, added.iloc[:, i]], ignore_index=True) if len(added) else stored
        del stored
        out[i] = both.take(positions).reset_index(drop=True)
    frame = pd.DataFrame(out, index=pd.RangeIndex(len(positions)))
    frame.columns = pd.Index(labels, dtype=_pandas_dtype(meta["label_dtype"]))
    return frame


def _pandas_dtype(dmeta: dict[str, Any]) -> Any:
    if dmeta["kind"] == "numpy":
        return np.dtype(dmeta["dtype"])
    if dmeta["kind"] == "string":
        return pd.StringDtype(dmeta["storage"], na_value=np.nan if dmeta["na"] == "nan" else pd.NA)
    return object


class _Members(dict):
    """The arrays of an .npz being written: each one goes into the zip when it is set (and is not
    kept), so writing holds one column's arrays at a time, not every column's."""

    def __init__(self, zf: zipfile.ZipFile):
        super().__init__()
        self.zf = zf

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        with self.zf.open(f"{key}.npy", "w", force_zip64=True) as fh:  # as np.savez writes each member
            np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def dump_to(fh: BinaryIO, frames: list[pd.DataFrame | None], extra: dict[str, Any]) -> None:
    """Write the frames (None kept as None) and a JSON-able `extra` as an .npz into `fh`, a column
    at a time; raises Unsupported (then `fh` holds a partial file: the caller discards it)."""
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        arrays = _Members(zf)
        manifest = {"extra": extra, "frames": [None if fr is None else _encode_frame(fr, f, arrays)
                                               for f, fr in enumerate(frames)]}
        arrays["manifest"] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)


def dump(frames: list[pd.DataFrame | None], extra: dict[str, Any]) -> bytes:
    """The frames (None kept as None) and a JSON-able `extra` as .npz bytes; raises Unsupported."""
    buf = io.BytesIO()
    dump_to(buf, frames, extra)
    return buf.getvalue()


def load(data: bytes | BinaryIO, patches: dict[int, tuple[np.ndarray, pd.DataFrame, int]] | None = None,
         ) -> tuple[list[pd.DataFrame | None], dict[str, Any]]:
    """What `dump` wrote (its bytes, or a file open on them); raises (ValueError, KeyError, ...) on
    anything malformed, never runs code. `patches`: frame number -> (positions, added rows, its
    rows as stored): that frame is read as its rows followed by `added`, taken at `positions`
    (connectors.state.validated_patch)."""
    patches = patches or {}
    with np.load(io.BytesIO(data) if isinstance(data, bytes | bytearray) else data, allow_pickle=False) as arrays:
        manifest = json.loads(arrays["manifest"].tobytes().decode())
        frames = [None if m is None else _decode_frame(m, f, arrays, patches.get(f))
                  for f, m in enumerate(manifest["frames"])]
        if any(f >= len(frames) or frames[f] is None for f in patches):
            raise ValueError("a patch for a frame that is not stored")
    return frames, manifest["extra"]
