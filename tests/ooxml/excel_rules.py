"""Excel's rules that the Open XML SDK validator does not check, read from the .xlsx itself.

Each rule is one Excel behaviour on opening a file (a repair prompt, a dropped table, a cut
cell) or a consumer that rejects the archive:

- table-header: a table's column names equal its header cells exactly (after XML attribute
  normalisation and `_xHHHH_` decoding, as Excel reads both);
- table-name: table names follow Excel's name rules, are not cell references (A1 or R1C1),
  and are unique case-insensitively across the workbook (and against global defined names);
- table-column: column names are 1..255 UTF-16 units, unique case-insensitively in a table,
  and their count is the width of the table's range;
- sheet-name: 1..31 UTF-16 units, none of `: \\ / ? * [ ]` or control characters, no leading or
  trailing apostrophe, not `History`, unique case-insensitively;
- text-length: every text cell (shared or inline string, formula string) is at most 32,767
  UTF-16 code units;
- zip64: no ZIP64 extra field on a member that does not need one (all sizes and its offset
  under 4 GiB);
- bounds: no cell, row, column, dimension, merge or table range past XFD / row 1,048,576;
- xml: every XML part is well-formed.

`excel_rule_violations(path)` returns every Violation found (an empty list when clean).
`xsd_violations(path)` validates the worksheet, table, workbook and shared-strings parts against
the ISO/IEC 29500-4 schemas in the shared standards folder (read there, never copied).
"""

from __future__ import annotations

import os
import posixpath
import re
import struct
import zipfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO, NamedTuple

from lxml import etree

from tests.shared_fixtures import STANDARDS

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
MC = "http://schemas.openxmlformats.org/markup-compatibility/2006"
XML_NS = "http://www.w3.org/XML/1998/namespace"

MAX_COLS = 16_384  # XFD
MAX_ROWS = 1_048_576
MAX_TEXT = 32_767  # UTF-16 code units in one cell
MAX_SHEET_NAME = 31
MAX_NAME = 255  # a defined/table name, and a table column name
ZIP64_LIMIT = 0xFFFF_FFFF
ZIP64_EXTRA_ID = 0x0001

SHEET_NAME_ILLEGAL = re.compile(r"[:\\/?*\[\]\x00-\x1f]")
RESERVED_SHEET_NAMES = {"history"}
# Excel: a name starts with a letter, `_` or `\`, then letters, digits, `.` and `_`.
NAME_RULE = re.compile(r"(?:[^\W\d]|[_\\])[\w.]*")
A1_REF = re.compile(r"\$?([A-Za-z]{1,3})\$?([0-9]+)")
R1C1_REF = re.compile(r"(?:[Rr][0-9]*)?(?:[Cc][0-9]*)?")
CELL_REF = re.compile(r"([A-Z]+)([0-9]+)")
XSTRING_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


class Violation(NamedTuple):
    """One broken rule: the part it is in, the rule's name (see module docstring), a message."""

    part: str
    rule: str
    message: str


def utf16_len(text: str) -> int:
    """Length as Excel counts it: UTF-16 code units (an emoji is two)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def decode_xstring(text: str) -> str:
    """Decode ST_Xstring's `_xHHHH_` escapes the way Excel does (`_x005F_` is a literal `_`)."""
    return XSTRING_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def column_index(letters: str) -> int:
    """1-based column number of `A`..`XFD` (and beyond, for bound checks)."""
    n = 0
    for ch in letters.upper():
        n = n * 26 + ord(ch) - 64
    return n


def is_cell_reference(name: str) -> bool:
    """True if Excel would read `name` as a cell reference (A1 within the grid, or R1C1 style)."""
    m = A1_REF.fullmatch(name)
    if m and column_index(m.group(1)) <= MAX_COLS and 1 <= int(m.group(2)) <= MAX_ROWS:
        return True
    return bool(name) and R1C1_REF.fullmatch(name) is not None


def _q(tag: str) -> str:
    return f"{{{MAIN}}}{tag}"


def _text_of(el: etree._Element) -> str:
    """The text of an `<si>` or `<is>`: its `<t>`, or its runs' `<t>` (not phonetic `<rPh>`)."""
    parts = [t.text or "" for t in el.iterchildren(_q("t"))]
    for r in el.iterchildren(_q("r")):
        parts += [t.text or "" for t in r.iterchildren(_q("t"))]
    return decode_xstring("".join(parts))


def _parse_range(ref: str) -> tuple[int, int, int, int] | None:
    """(col1, row1, col2, row2) of `A1` or `A1:B2`; None if it is not a cell range."""
    cells = []
    for end in ref.split(":"):
        m = CELL_REF.fullmatch(end.replace("$", ""))
        if not m:
            return None
        cells.append((column_index(m.group(1)), int(m.group(2))))
    (c1, r1), (c2, r2) = cells[0], cells[-1]
    return c1, r1, c2, r2


def _resolve(source: str, target: str) -> str:
    """A relationship target as a zip member name (relative to the source part's folder)."""
    if target.startswith("/"):
        return target.lstrip("/")
    return posixpath.normpath(posixpath.join(posixpath.dirname(source), target))


def _rels_of(z: zipfile.ZipFile, part: str) -> dict[str, tuple[str, str]]:
    """{rId: (type, member)} of `part`'s relationships (empty if it has none)."""
    rels = posixpath.join(posixpath.dirname(part), "_rels", posixpath.basename(part) + ".rels")
    if rels not in z.namelist():
        return {}
    root = etree.fromstring(z.read(rels))
    return {r.get("Id"): (r.get("Type", ""), _resolve(part, r.get("Target", "")))
            for r in root.iterchildren(f"{{{PKG_REL}}}Relationship")
            if r.get("TargetMode") != "External"}


# ----------------------------------------------------------------------------- ZIP64


def _has_zip64_extra(extra: bytes) -> bool:
    i = 0
    while i + 4 <= len(extra):
        header_id, size = struct.unpack_from("<HH", extra, i)
        if header_id == ZIP64_EXTRA_ID:
            return True
        i += 4 + size
    return False


def _local_extra(fh: IO[bytes], info: zipfile.ZipInfo) -> bytes:
    fh.seek(info.header_offset)
    head = fh.read(30)
    name_len, extra_len = struct.unpack_from("<HH", head, 26)
    fh.seek(name_len, os.SEEK_CUR)
    return fh.read(extra_len)


def zip64_violations(path: str | os.PathLike[str]) -> list[Violation]:
    """Members with a ZIP64 extra field (local or central header) that fit without one."""
    out = []
    with zipfile.ZipFile(path) as z, open(path, "rb") as fh:
        for info in z.infolist():
            needed = max(info.file_size, info.compress_size, info.header_offset) >= ZIP64_LIMIT
            where = [name for name, extra in (("local", _local_extra(fh, info)), ("central", info.extra))
                     if _has_zip64_extra(extra)]
            if where and not needed:
                out.append(Violation(info.filename, "zip64",
                                     f"ZIP64 extra field in the {' and '.join(where)} header of a "
                                     f"{info.file_size:,}-byte member (needed only at 4 GiB)"))
    return out


# ----------------------------------------------------------------------------- workbook parts


class _Table(NamedTuple):
    part: str
    sheet_part: str
    name: str
    display_name: str
    ref: tuple[int, int, int, int] | None
    ref_text: str
    header_rows: int
    columns: list[str]
    count: int | None


def _tables(z: zipfile.ZipFile, sheet_part: str, out: list[Violation]) -> list[_Table]:
    tables = []
    for kind, member in _rels_of(z, sheet_part).values():
        if not kind.endswith("/table"):
            continue
        try:
            root = etree.fromstring(z.read(member))
        except KeyError:
            out.append(Violation(sheet_part, "xml", f"its table part {member} is missing"))
            continue
        except etree.XMLSyntaxError:  # reported by the well-formedness pass
            continue
        cols_el = root.find(_q("tableColumns"))
        columns = [decode_xstring(c.get("name", "")) for c in cols_el.iterchildren(_q("tableColumn"))] if cols_el is not None else []
        count = cols_el.get("count") if cols_el is not None else None
        ref_text = root.get("ref", "")
        tables.append(_Table(
            part=member, sheet_part=sheet_part, name=root.get("name", ""),
            display_name=root.get("displayName", ""), ref=_parse_range(ref_text), ref_text=ref_text,
            header_rows=int(root.get("headerRowCount", "1")), columns=columns,
            count=int(count) if count is not None and count.isdigit() else None))
    return tables


def _shared_strings(z: zipfile.ZipFile, wb_rels: dict[str, tuple[str, str]],
                    out: list[Violation]) -> list[str]:
    member = next((m for kind, m in wb_rels.values() if kind.endswith("/sharedStrings")), None)
    if member is None or member not in z.namelist():
        return []
    strings = []
    try:
        with z.open(member) as fh:
            for _, si in etree.iterparse(fh, tag=_q("si")):
                text = _text_of(si)
                if utf16_len(text) > MAX_TEXT:
                    out.append(Violation(member, "text-length",
                                         f"shared string {len(strings)} is {utf16_len(text):,} UTF-16 "
                                         f"units (Excel's limit is {MAX_TEXT:,})"))
                strings.append(text)
                si.clear()
    except etree.XMLSyntaxError as exc:
        out.append(Violation(member, "xml", f"not well-formed: {exc}"))
    return strings


def _cell_text(c: etree._Element, sst: list[str]) -> str | None:
    kind = c.get("t", "n")
    if kind == "inlineStr":
        is_el = c.find(_q("is"))
        return _text_of(is_el) if is_el is not None else ""
    v = c.find(_q("v"))
    value = v.text if v is not None and v.text is not None else None
    if value is None:
        return None
    if kind == "s":
        return sst[int(value)] if value.isdigit() and int(value) < len(sst) else None
    if kind == "b":
        return "TRUE" if value == "1" else "FALSE"
    return decode_xstring(value) if kind == "str" else value


def _scan_sheet(z: zipfile.ZipFile, part: str, sst: list[str], header_rows: set[int],
                out: list[Violation]) -> dict[tuple[int, int], str | None]:
    """One pass over a worksheet: bounds and text-length rules; returns the header rows' cells.

    A `<row>` or `<c>` without `r` is the one after its predecessor (ECMA-376 18.3.1.73/18.3.1.4)."""
    headers: dict[tuple[int, int], str | None] = {}
    far_cells, first_far = 0, ""
    row = col = 0
    try:
        with z.open(part) as fh:
            for event, el in etree.iterparse(fh, events=("start", "end")):
                tag = el.tag
                if event == "start":
                    if tag == _q("row"):
                        r = el.get("r")
                        row, col = (int(r) if r and r.isdigit() else row + 1), 0
                        if row > MAX_ROWS:
                            out.append(Violation(part, "bounds", f"row {row:,} is past row {MAX_ROWS:,}"))
                    continue
                if tag == _q("c"):
                    ref = el.get("r", "")
                    m = CELL_REF.fullmatch(ref)
                    col = column_index(m.group(1)) if m else col + 1
                    if col > MAX_COLS or row > MAX_ROWS:
                        far_cells += 1
                        first_far = first_far or f"row {row}, column {col}"
                    if row in header_rows:
                        headers[(row, col)] = _cell_text(el, sst)
                    if el.get("t") in ("inlineStr", "str"):
                        text = _cell_text(el, sst) or ""
                        if utf16_len(text) > MAX_TEXT:
                            out.append(Violation(part, "text-length",
                                                 f"cell at row {row}, column {col} holds {utf16_len(text):,} "
                                                 f"UTF-16 units (Excel's limit is {MAX_TEXT:,})"))
                    el.clear()
                elif tag == _q("row"):
                    el.clear()
                elif tag == _q("col"):
                    if int(el.get("max", "0")) > MAX_COLS:
                        out.append(Violation(part, "bounds", f"<col max={el.get('max')}> is past XFD"))
                elif tag in (_q("dimension"), _q("mergeCell")):
                    rng = _parse_range(el.get("ref", ""))
                    if rng and (rng[2] > MAX_COLS or rng[3] > MAX_ROWS):
                        out.append(Violation(part, "bounds", f"<{etree.QName(el).localname} ref="
                                                              f"{el.get('ref')}> is past XFD1048576"))
    except etree.XMLSyntaxError as exc:
        out.append(Violation(part, "xml", f"not well-formed: {exc}"))
    if far_cells:
        out.append(Violation(part, "bounds", f"{far_cells:,} cells past XFD1048576 (first at {first_far})"))
    return headers


def _sheet_name_violations(names: list[str]) -> list[Violation]:
    out, seen = [], {}
    for name in names:
        problems = []
        n = utf16_len(name)
        if not 1 <= n <= MAX_SHEET_NAME:
            problems.append(f"is {n} UTF-16 units (1..{MAX_SHEET_NAME})")
        if SHEET_NAME_ILLEGAL.search(name):
            problems.append("has a character Excel forbids (: \\ / ? * [ ] or a control character)")
        if name.startswith("'") or name.endswith("'"):
            problems.append("starts or ends with an apostrophe")
        if name.casefold() in RESERVED_SHEET_NAMES:
            problems.append("is reserved by Excel")
        if name.casefold() in seen:
            problems.append(f"repeats sheet {seen[name.casefold()]!r} (case-insensitively)")
        seen.setdefault(name.casefold(), name)
        out += [Violation("xl/workbook.xml", "sheet-name", f"sheet name {name!r} {p}") for p in problems]
    return out


def _table_name_problems(name: str) -> list[str]:
    problems = []
    if not NAME_RULE.fullmatch(name):
        problems.append("breaks Excel's name rules (a letter, _ or \\ first; then letters, digits, . and _)")
    if utf16_len(name) > MAX_NAME:
        problems.append(f"is over {MAX_NAME} characters")
    if is_cell_reference(name):
        problems.append("is a cell reference")
    return problems


def _table_violations(tables: list[_Table], headers: dict[str, dict[tuple[int, int], str | None]],
                      global_names: set[str]) -> list[Violation]:
    out: list[Violation] = []
    seen: dict[str, str] = {}
    for t in tables:
        for attr, value in (("name", t.name), ("displayName", t.display_name)):
            out += [Violation(t.part, "table-name", f"table {attr} {value!r} {p}")
                    for p in _table_name_problems(value)]
        for value in {t.name.casefold(), t.display_name.casefold()}:
            if value in seen and seen[value] != t.part:
                out.append(Violation(t.part, "table-name",
                                     f"table name {value!r} is also used by {seen[value]} (case-insensitively)"))
            elif value in global_names:
                out.append(Violation(t.part, "table-name", f"table name {value!r} is also a defined name"))
            seen.setdefault(value, t.part)
        if t.ref is None:
            out.append(Violation(t.part, "bounds", f"table ref {t.ref_text!r} is not a cell range"))
            continue
        c1, r1, c2, r2 = t.ref
        if c2 > MAX_COLS or r2 > MAX_ROWS:
            out.append(Violation(t.part, "bounds", f"table ref {t.ref_text} is past XFD1048576"))
        width = c2 - c1 + 1
        if len(t.columns) != width or (t.count is not None and t.count != len(t.columns)):
            out.append(Violation(t.part, "table-column",
                                 f"{len(t.columns)} tableColumn (count={t.count}) for a range "
                                 f"{width} columns wide ({t.ref_text})"))
        names_seen: dict[str, str] = {}
        for name in t.columns:
            n = utf16_len(name)
            if not 1 <= n <= MAX_NAME:
                out.append(Violation(t.part, "table-column",
                                     f"column name {name[:40]!r}... is {n} UTF-16 units (1..{MAX_NAME})"
                                     if n > 40 else f"column name {name!r} is {n} UTF-16 units (1..{MAX_NAME})"))
            key = name.casefold()
            if key in names_seen:
                out.append(Violation(t.part, "table-column",
                                     f"column name {name!r} repeats {names_seen[key]!r} (case-insensitively)"))
            names_seen.setdefault(key, name)
        if t.header_rows:
            cells = headers.get(t.sheet_part, {})
            for i, name in enumerate(t.columns[:width]):
                cell = cells.get((r1, c1 + i))
                if cell != name:
                    out.append(Violation(t.part, "table-header",
                                         f"column {i + 1} is named {name!r} but its header cell "
                                         f"holds {cell!r}"))
    return out


def excel_rule_violations(path: str | os.PathLike[str]) -> list[Violation]:
    """Every Excel rule (module docstring) the workbook at `path` breaks; [] when it is clean."""
    out: list[Violation] = zip64_violations(path)
    with zipfile.ZipFile(path) as z:
        for member in z.namelist():
            if member.endswith((".xml", ".rels")) and not member.startswith("xl/worksheets/sheet"):
                try:
                    etree.fromstring(z.read(member))
                except etree.XMLSyntaxError as exc:
                    out.append(Violation(member, "xml", f"not well-formed: {exc}"))
        if any(v.part == "xl/workbook.xml" and v.rule == "xml" for v in out):
            return out
        wb = etree.fromstring(z.read("xl/workbook.xml"))
        wb_rels = _rels_of(z, "xl/workbook.xml")
        sheets = [(s.get("name", ""), wb_rels.get(s.get(f"{{{REL}}}id"), ("", ""))[1])
                  for s in wb.iter(_q("sheet"))]
        out += _sheet_name_violations([name for name, _ in sheets])
        global_names = {d.get("name", "").casefold() for d in wb.iter(_q("definedName"))
                        if d.get("localSheetId") is None}
        sst = _shared_strings(z, wb_rels, out)
        tables: list[_Table] = []
        headers: dict[str, dict[tuple[int, int], str | None]] = {}
        for _, part in sheets:
            if part not in z.namelist():
                continue
            sheet_tables = _tables(z, part, out)
            tables += sheet_tables
            header_rows = {t.ref[1] for t in sheet_tables if t.ref and t.header_rows}
            headers[part] = _scan_sheet(z, part, sst, header_rows, out)
        out += _table_violations(tables, headers, global_names)
    return out


# ----------------------------------------------------------------------------- XSD (optional)


def xsd_dir() -> Path | None:
    """The ISO/IEC 29500-4 schemas: $OOXML_XSD_DIR, else ../shared/standards/ooxml-xsd beside the clone."""
    for candidate in (os.environ.get("OOXML_XSD_DIR"), STANDARDS / "ooxml-xsd"):
        if candidate and (Path(candidate) / "ISO-IEC29500-4" / "sml.xsd").is_file():
            return Path(candidate)
    return None


@lru_cache(maxsize=2)
def _sml_schema(folder: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(Path(folder) / "ISO-IEC29500-4" / "sml.xsd")))


def _strip_for_xsd(root: etree._Element) -> None:
    """Drop what the transitional schema cannot judge: markup compatibility (mc:* attributes and
    what mc:Ignorable namespaces add) and `xml:space` on `<t>` (the schema README's known gap)."""
    ignorable = set((root.get(f"{{{MC}}}Ignorable") or "").split())
    ns_ignored = {root.nsmap.get(p) for p in ignorable} - {None}
    for el in list(root.iter()):
        if not isinstance(el.tag, str):
            continue
        for attr in list(el.attrib):
            ns = etree.QName(attr).namespace
            if ns == MC or ns in ns_ignored or (attr == f"{{{XML_NS}}}space" and el.tag == _q("t")):
                del el.attrib[attr]
        if etree.QName(el).namespace in ns_ignored and el.getparent() is not None:
            el.getparent().remove(el)


def _xsd_parts(z: zipfile.ZipFile) -> Iterator[str]:
    for name in z.namelist():
        if (name == "xl/workbook.xml" or name == "xl/sharedStrings.xml" or name == "xl/styles.xml"
                or re.fullmatch(r"xl/(worksheets/sheet|tables/table)\d+\.xml", name)):
            yield name


def xsd_violations(path: str | os.PathLike[str], folder: Path | None = None,
                   limit: int = 20) -> list[Violation] | None:
    """The workbook, styles, shared-strings, worksheet and table parts checked against sml.xsd
    (at most `limit` errors a part); None when the schemas are not there."""
    folder = folder or xsd_dir()
    if folder is None:
        return None
    schema = _sml_schema(str(folder))
    out: list[Violation] = []
    with zipfile.ZipFile(path) as z:
        for part in _xsd_parts(z):
            try:
                root = etree.fromstring(z.read(part), etree.XMLParser(huge_tree=True))
            except etree.XMLSyntaxError as exc:
                out.append(Violation(part, "xsd", f"not well-formed: {exc}"))
                continue
            _strip_for_xsd(root)
            if not schema.validate(root):
                out += [Violation(part, "xsd", f"line {e.line}: {e.message}")
                        for e in list(schema.error_log)[:limit]]
    return out


def tables_by_sheet(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """{sheet name: [its tables' names]} in workbook order (to see a table that went missing)."""
    with zipfile.ZipFile(path) as z:
        wb = etree.fromstring(z.read("xl/workbook.xml"))
        wb_rels = _rels_of(z, "xl/workbook.xml")
        out: dict[str, list[str]] = {}
        for s in wb.iter(_q("sheet")):
            part = wb_rels.get(s.get(f"{{{REL}}}id"), ("", ""))[1]
            out[s.get("name", "")] = [t.name for t in _tables(z, part, [])] if part in z.namelist() else []
    return out
