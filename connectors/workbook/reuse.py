"""A workbook written again from the last one when nothing it shows has changed: every member
copied as stored (its deflated bytes, CRC-32 and sizes: nothing decompressed or compressed
again), except the late (About) sheet, its table and the document properties, written anew.

The ZIP is written here, by the layout of APPNOTE.TXT (PKWARE's .ZIP File Format Specification,
4.3.7 local file header, 4.3.12 central directory header, 4.3.16 end of central directory):
`zipfile` cannot add a member that is already compressed. No ZIP64: a workbook with a member,
an offset or a size at 4 GiB or more is not rewritten (None: the caller writes it whole).
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from config.workbook import SheetData
from connectors.workbook.xlsx_writer import WriteStats, rewrite_late

_LOCAL = struct.Struct("<IHHHHHIIIHH")  # APPNOTE 4.3.7
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")  # 4.3.12
_END = struct.Struct("<IHHHHIIH")  # 4.3.16
_LIMIT = 0xFFFFFFFF
_CORE = "docProps/core.xml"
_STAMP = re.compile(rb"(<dcterms:(?:created|modified) [^>]*>)[^<]*(</dcterms:(?:created|modified)>)")
_COPY_CHUNK = 1 << 20


@dataclass
class _Member:
    name: bytes
    flags: int
    method: int
    dos_time: int
    dos_date: int
    crc: int
    compressed: int
    size: int
    external: int
    offset: int = 0


def rewrite(kept: Path, target: Path, late: SheetData, *, late_part: str, late_table: str,
            generated_at: datetime) -> WriteStats | None:
    """Write `target` (atomically: a temp file beside it, then rename) as the workbook `kept` with
    its late sheet `late_part` (table `late_table`) holding `late`'s rows, and its created and
    modified times `generated_at`. None (nothing written) when `kept` cannot be rewritten so."""
    try:
        with zipfile.ZipFile(kept) as src:
            infos = src.infolist()
            names = {i.filename for i in infos}
            table_part = next((n for n in sorted(names) if n.startswith("xl/tables/")
                               and re.search(rb'<table [^>]*?name="%s"' % re.escape(late_table.encode()), src.read(n))),
                              None)
            if late_part not in names or table_part is None or not _fits(infos):
                return None
            redone = rewrite_late(src.read(late_part), src.read(table_part), late, late_table)
            if redone is None:
                return None
            part, table, stats = redone
            fresh = {late_part: part, table_part: table}
            if _CORE in names:
                stamp = generated_at.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
                fresh[_CORE] = _STAMP.sub(lambda m: m.group(1) + stamp + m.group(2), src.read(_CORE))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError):
        return None
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with open(kept, "rb") as fh, open(tmp, "wb") as out:
            written = _write(fh, out, infos, fresh, generated_at)
            out.flush()
            os.fsync(out.fileno())
        if not written:
            tmp.unlink(missing_ok=True)
            return None
        os.replace(tmp, target)
    except zipfile.BadZipFile:  # `kept` is not what its central directory says
        tmp.unlink(missing_ok=True)
        return None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return stats


def _fits(infos: list[zipfile.ZipInfo]) -> bool:
    """Every member small enough, stored or deflated, unencrypted: this writer copies it as it is."""
    return len(infos) < 0xFFFF and all(
        i.compress_size < _LIMIT and i.file_size < _LIMIT and i.header_offset < _LIMIT and not i.flag_bits & 0x1
        and i.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) for i in infos)


def _write(src: BinaryIO, out: BinaryIO, infos: list[zipfile.ZipInfo], fresh: dict[str, bytes],
           now: datetime) -> bool:
    """The members of `src` in their order into `out` (those named in `fresh` deflated from
    their new bytes), then the central directory; False when the result would need ZIP64."""
    members: list[_Member] = []
    for info in infos:
        if info.filename in fresh:
            data = fresh[info.filename]
            packer = zlib.compressobj(6, zlib.DEFLATED, -15)
            body = packer.compress(data) + packer.flush()
            t, d = _dos(now.timetuple()[:6])
            m = _Member(info.filename.encode("utf-8"), 0x800 if info.flag_bits & 0x800 else 0, zipfile.ZIP_DEFLATED,
                        t, d, zlib.crc32(data), len(body), len(data), info.external_attr)
            chunks: Iterator[bytes] = iter((body,))
        else:
            t, d = _dos(info.date_time)
            m = _Member(info.filename.encode("utf-8"), info.flag_bits & 0x800, info.compress_type, t, d, info.CRC,
                        info.compress_size, info.file_size, info.external_attr)
            chunks = _raw(src, info)
        m.offset = out.tell()
        if m.offset >= _LIMIT:
            return False
        out.write(_LOCAL.pack(0x04034B50, 20, m.flags, m.method, m.dos_time, m.dos_date, m.crc, m.compressed, m.size,
                              len(m.name), 0) + m.name)
        for chunk in chunks:
            out.write(chunk)
        members.append(m)
    start = out.tell()
    for m in members:
        out.write(_CENTRAL.pack(0x02014B50, 20, 20, m.flags, m.method, m.dos_time, m.dos_date, m.crc, m.compressed,
                                m.size, len(m.name), 0, 0, 0, 0, m.external, m.offset) + m.name)
    end = out.tell()
    if end >= _LIMIT:
        return False
    out.write(_END.pack(0x06054B50, 0, 0, len(members), len(members), end - start, start, 0))
    return True


def _raw(src: BinaryIO, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The member's stored bytes, as they are (after its local header: APPNOTE 4.3.7)."""
    src.seek(info.header_offset)
    head = src.read(_LOCAL.size)
    if len(head) != _LOCAL.size or head[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    src.seek(info.header_offset + _LOCAL.size + name_len + extra_len)
    left = info.compress_size
    while left:
        chunk = src.read(min(_COPY_CHUNK, left))
        if not chunk:
            raise zipfile.BadZipFile(f"{info.filename} is cut short")
        left -= len(chunk)
        yield chunk


def _dos(stamp: tuple[int, ...]) -> tuple[int, int]:
    year, month, day, hour, minute, second = stamp[:6]
    return (hour << 11) | (minute << 5) | (second // 2), (max(year, 1980) - 1980) << 9 | (month << 5) | day
