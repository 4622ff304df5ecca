"""Look inside an .xlsx before calamine parses it: a workbook is a zip of XML parts, and calamine
allocates the whole rectangle from A1 to the farthest cell (one cell at XFD1048576 asks for
512 GiB) and inflates whatever the archive holds.

`inspect(data, ...)` checks, against the source's `limits`:
- the archive's declared sizes (`max_uncompressed_mb`) and each part's compression ratio
  (`max_compression_ratio`), before inflating anything;
- the real size of every XML part, inflated in pieces (a part that inflates past its declared
  size fails its CRC: the sizes are not trusted);
- the real extent of the sheet's cells, rows x columns from A1 (`max_cells`); the sheet's
  `<dimension>` is not trusted either (calamine sizes by the cells, not by it).
It also returns what calamine would read differently from the file: formula cells with no saved
value (calamine gives an empty cell) and text escaped as `_x005F_` (the OOXML escape of a literal
`_xHHHH_`, which calamine decodes once too often), as corrections by cell.
Files that are not zips (.xls) are only bounded by their size.
"""

from __future__ import annotations

import html
import io
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from connectors.errors import SourceDataError

PIECE = 8 << 20
MIN_RATIO_BYTES = 1 << 20  # parts smaller than this are not judged by their ratio
MAX_PARTS = 10_000
NS_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
NS_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_P = rb"(?:[A-Za-z_][\w.-]*:)?"  # an optional namespace prefix (x:row)
_ROW_R = re.compile(rb"<" + _P + rb'row\b[^>]*?\sr="(\d+)"')
_ROW_ANY = re.compile(rb"<" + _P + rb"row[\s>/]")
_REF3 = re.compile(rb' r="([A-Z]{3})\d')
_REF2 = re.compile(rb' r="([A-Z]{2})\d')
_CELL_ANY = re.compile(rb"<" + _P + rb"c[\s>/]")
_CELL_R = re.compile(rb"<" + _P + rb'c\b[^>]*?\sr="[A-Z]')
_ROW_END = re.compile(rb"</" + _P + rb"row>")
_NO_VALUE_FORMULA = re.compile(rb"<" + _P + rb"c\b([^>]*)>\s*<" + _P + rb"f\b[^>]*?(?:/>|>[^<]*</" + _P + rb"f>)\s*</"
                               + _P + rb"c>")
_CELL_REF = re.compile(rb'\sr="([A-Z]{1,3})(\d+)"')
_ESCAPED = re.compile(rb"_x005[Ff]_")
_CELL_FULL = re.compile(rb"<" + _P + rb"c\b([^>]*)>(.*?)</" + _P + rb"c>", re.S)
_VALUE = re.compile(rb"<" + _P + rb"v>(\d+)</" + _P + rb"v>")
_TEXT = re.compile(rb"<" + _P + rb"t\b[^>]*>(.*?)</" + _P + rb"t>", re.S)
_PHONETIC = re.compile(rb"<" + _P + rb"rPh\b.*?</" + _P + rb"rPh>", re.S)
_SI = re.compile(rb"<" + _P + rb"si\b[^>]*>(.*?)</" + _P + rb"si>|<" + _P + rb"si\s*/>", re.S)
_HEX = re.compile(r"_x([0-9A-Fa-f]{4})_")


@dataclass
class Findings:
    """What to correct after calamine: (row, column) 1-based -> a reason (the row is rejected), or the text."""

    formula_cells: dict[int, list[str]] = field(default_factory=dict)
    texts: dict[tuple[int, int], str] = field(default_factory=dict)


def column_number(letters: bytes | str) -> int:
    n = 0
    for ch in letters.decode() if isinstance(letters, bytes) else letters:
        n = n * 26 + ord(ch) - 64
    return n


def column_letters(n: int) -> str:
    out = ""
    while n:
        n, rem = divmod(n - 1, 26)
        out = chr(65 + rem) + out
    return out


def decode_text(raw: bytes) -> str:
    """The text of a <t> element: XML entities, then ECMA-376's _xHHHH_ escapes, left to right once."""
    text = html.unescape(raw.decode("utf-8", "replace"))
    return _HEX.sub(lambda m: chr(int(m.group(1), 16)), text)


def _string_of(element: bytes) -> str:
    return "".join(decode_text(t) for t in _TEXT.findall(_PHONETIC.sub(b"", element)))


class _Guard:
    def __init__(self, data: bytes, name: str, limits: Any, what: str):
        self.name, self.limits, self.what = name, limits, what
        try:
            self.zf = zipfile.ZipFile(io.BytesIO(data))
            self.infos = {i.filename: i for i in self.zf.infolist()}
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise self.error(f"is not a readable Excel workbook ({exc})") from exc

    def error(self, text: str) -> SourceDataError:
        return SourceDataError(f"{self.what}: {self.name} {text}")

    def check_declared(self) -> None:
        if len(self.infos) > MAX_PARTS:
            raise self.error(f"holds {len(self.infos):,} parts (over {MAX_PARTS:,}): not a workbook")
        total = sum(i.file_size for i in self.infos.values())
        cap = self.limits.max_uncompressed_mb * (1 << 20)
        if total > cap:
            raise self.error(f"inflates to {total / (1 << 20):,.0f} MB, over limits.max_uncompressed_mb "
                             f"({self.limits.max_uncompressed_mb:g}); raise it on the source if the workbook is really that big")
        for info in self.infos.values():
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size >= MIN_RATIO_BYTES and ratio > self.limits.max_compression_ratio:
                raise self.error(f"part {info.filename} is compressed {ratio:,.0f}:1, over "
                                 f"limits.max_compression_ratio ({self.limits.max_compression_ratio:g}): a zip bomb? "
                                 "Spreadsheets compress about 10-25:1; raise the limit on the source if this one is real")

    def pieces(self, name: str) -> Any:
        """The part's real bytes in pieces; its declared size and CRC are checked while inflating."""
        info = self.infos[name]
        budget = self.limits.max_uncompressed_mb * (1 << 20)
        seen = 0
        try:
            with self.zf.open(info) as fh:
                while piece := fh.read(PIECE):
                    seen += len(piece)
                    if seen > info.file_size or seen > budget:
                        raise self.error(f"part {name} inflates past its declared size: a zip bomb?")
                    yield piece
        except (zipfile.BadZipFile, EOFError, zlib.error, OSError, NotImplementedError, ValueError) as exc:
            raise self.error(f"part {name} does not inflate to its declared size and checksum ({exc}): a damaged "
                             "file or a zip bomb") from exc

    def read(self, name: str) -> bytes:
        return b"".join(self.pieces(name))

    def sheet_part(self, sheet: str | int | None) -> tuple[str, str] | None:
        """(part name, sheet name) of the selected sheet, or None (calamine names the problem)."""
        import xml.etree.ElementTree as ET  # noqa: N817 - the stdlib's own short name

        if "xl/workbook.xml" not in self.infos or "xl/_rels/workbook.xml.rels" not in self.infos:
            return None
        try:
            book = ET.fromstring(self.read("xl/workbook.xml"))
            rels = ET.fromstring(self.read("xl/_rels/workbook.xml.rels"))
        except ET.ParseError:
            return None
        sheets = [(s.get("name") or "", s.get(f"{{{NS_REL}}}id") or "") for s in book.iter(f"{{{NS_MAIN}}}sheet")]
        if isinstance(sheet, int) and not isinstance(sheet, bool):
            picked = sheets[sheet] if 0 <= sheet < len(sheets) else None
        else:
            picked = next((s for s in sheets if s[0] == (sheet if sheet is not None else s[0])), None)
        if picked is None:
            return None
        targets = {r.get("Id"): r.get("Target") or "" for r in rels}
        target = targets.get(picked[1], "")
        part = target.lstrip("/") if target.startswith("/") else str(PurePosixPath("xl") / target)
        part = str(PurePosixPath(*[p for p in PurePosixPath(part).parts if p not in (".",)]))
        return (part, picked[0]) if part in self.infos else None


def inspect(data: bytes, *, name: str, sheet: str | int | None, limits: Any, what: str) -> Findings:
    """Raise SourceDataError naming the limit a workbook breaks; else what to correct after calamine."""
    if not data.startswith(b"PK"):
        return Findings()  # .xls and others: bounded by limits.max_file_mb only
    guard = _Guard(data, name, limits, what)
    guard.check_declared()
    picked = guard.sheet_part(sheet)
    for part in guard.infos:  # every XML part inflates to what it declares (calamine reads several)
        if part.endswith((".xml", ".rels")) and part != (picked or ("",))[0] and part != "xl/sharedStrings.xml":
            for _ in guard.pieces(part):
                pass
    shared = guard.read("xl/sharedStrings.xml") if "xl/sharedStrings.xml" in guard.infos else b""
    if picked is None or not picked[0].endswith(".xml"):
        return Findings()  # .xlsb sheets are binary: bounded by the archive checks above
    part, sheet_name = picked
    strings = {}
    if _ESCAPED.search(shared):  # rare: only then are the shared strings read one by one
        strings = {i: _string_of(m.group(1)) for i, m in enumerate(_SI.finditer(shared))
                   if m.group(1) and _ESCAPED.search(m.group(1))}
    return _scan_sheet(guard, part, sheet_name, strings)


@dataclass
class _Extent:
    max_row: int = 0
    rows_seen: int = 0
    max_col: int = 0
    cells: int = 0
    cells_with_ref: int = 0


def _max_column(block: bytes) -> int:
    for rx in (_REF3, _REF2):
        letters = set(rx.findall(block))
        if letters:
            return max(column_number(x) for x in letters)
    for n in range(26, 0, -1):
        if b' r="' + bytes([64 + n]) in block:
            return n
    return 0


def _scan_block(block: bytes, ext: _Extent, shared_fixes: dict[int, str], found: Findings) -> None:
    rows = _ROW_R.findall(block)
    if rows:
        ext.max_row = max(ext.max_row, max(map(int, rows)))
    ext.rows_seen += len(_ROW_ANY.findall(block))
    ext.max_col = max(ext.max_col, _max_column(block))
    ext.cells += len(_CELL_ANY.findall(block))
    ext.cells_with_ref += len(_CELL_R.findall(block))
    if b"<f" in block or b":f" in block:
        for m in _NO_VALUE_FORMULA.finditer(block):
            ref = _CELL_REF.search(m.group(1))
            if ref is not None:
                found.formula_cells.setdefault(int(ref.group(2)), []).append((ref.group(1) + ref.group(2)).decode())
    if shared_fixes or _ESCAPED.search(block):
        _escaped_cells(block, shared_fixes, found)


def _scan_sheet(guard: _Guard, part: str, sheet_name: str, shared_fixes: dict[int, str]) -> Findings:
    found, ext = Findings(), _Extent()
    carry = b""
    for piece in guard.pieces(part):
        chunk = carry + piece
        end = max((m.end() for m in _ROW_END.finditer(chunk, max(0, len(chunk) - len(piece) - 64))), default=0)
        if end:
            _scan_block(chunk[:end], ext, shared_fixes, found)
        carry = chunk[end:]
    _scan_block(carry, ext, shared_fixes, found)
    if ext.cells_with_ref < ext.cells:  # cells without an r="A1" reference: count the widest row
        widest = max((len(_CELL_ANY.findall(row)) for row in _ROW_END.split(guard.read(part))), default=0)
        ext.max_col = max(ext.max_col, widest)
    rows = max(ext.max_row, ext.rows_seen)
    cells = rows * ext.max_col
    if cells > guard.limits.max_cells:
        far = f"{column_letters(ext.max_col)}{rows}"
        raise guard.error(f"sheet {sheet_name!r} reaches cell {far} ({rows:,} rows x {ext.max_col:,} columns = "
                          f"{cells:,} cells from A1), over limits.max_cells ({guard.limits.max_cells:,}); raise it on "
                          "the source if the sheet is really that big")
    return found


def _escaped_cells(block: bytes, shared_fixes: dict[int, str], found: Findings) -> None:
    """Cells whose text holds an escaped underscore: their text as ECMA-376 decodes it."""
    for m in _CELL_FULL.finditer(block):
        attrs, body = m.group(1), m.group(2)
        ref = _CELL_REF.search(attrs)
        if ref is None:
            continue
        pos = (int(ref.group(2)), column_number(ref.group(1)))
        if b't="s"' in attrs and shared_fixes:
            v = _VALUE.search(body)
            if v is not None and int(v.group(1)) in shared_fixes:
                found.texts[pos] = shared_fixes[int(v.group(1))]
        elif b't="inlineStr"' in attrs and _ESCAPED.search(body):
            found.texts[pos] = _string_of(body)
