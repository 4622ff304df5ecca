"""Names Excel accepts: sheet names, table names and table column names.

Excel counts lengths in UTF-16 code units (an emoji is two) and compares names without regard
to case. What it refuses or repairs on opening a file:
- a sheet name: 1..31 units, none of `: \\ / ? * [ ]`, no apostrophe first or last, not
  `History` (reserved), unique in the workbook;
- a table name: a letter, `_` or `\\` first, then letters, digits, `_` and `.`; never a cell
  reference (`tbl2026` is column TBL, row 2026; `R1C1`), at most 255 units, unique in the workbook;
- a table column name: 1..255 units, unique in its table, equal to its header cell as Excel reads
  both. The `name` attribute is an ST_Xstring (ECMA-376 Part 1 §22.9.2.19): Excel decodes
  `_xHHHH_` in it, so a literal `_xHHHH_` is written `_x005F_xHHHH_` (the rule of §22.4.2.4;
  [MS-OI29500] 2.1.1747: Excel escapes only that underscore). XML attribute normalisation turns a
  raw TAB/CR/LF into a space, so headers carry none: they become spaces in the cell too.
XML 1.0 cannot hold C0 control characters (but TAB, LF, CR), U+FFFE/U+FFFF or lone surrogates.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from config.workbook import table_name

MAX_SHEET_NAME = 31
MAX_NAME = 255  # a table name, and a table column name (the Open XML SDK's limit too)
RESERVED_SHEET_NAMES = frozenset({"history"})
REPLACEMENT = "\ufffd"

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x1f\ufffe\uffff]")  # headers: TAB/LF/CR too (see the module docstring)
_SHEET_BAD = re.compile(r"[\[\]:*?/\\\x00-\x1f\ufffe\uffff]")
_XSTRING_START = re.compile(r"_(?=x[0-9A-Fa-f]{4}_)")  # every `_` that starts one, overlapping ones too
_A1_LIKE = re.compile(r"[A-Za-z]{1,3}[0-9]+")  # any column letters + row: stricter than the grid
_R1C1 = re.compile(r"(?:[Rr][0-9]*)?(?:[Cc][0-9]*)?")


def utf16_len(text: str) -> int:
    """Length as Excel counts it: UTF-16 code units."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def cut_utf16(text: str, limit: int) -> str:
    """The longest prefix of `text` within `limit` UTF-16 units (a pair is never split)."""
    if len(text) <= limit and (text.isascii() or len(text) <= limit // 2):
        return text
    if text.isascii():
        return text[:limit]
    units = text.encode("utf-16-le", "surrogatepass")
    if len(units) <= 2 * limit:
        return text
    head = units[: 2 * limit]
    if 0xD8 <= head[-1] <= 0xDB:  # the first half of a pair (little-endian: high byte last)
        head = head[:-2]
    return head.decode("utf-16-le", "surrogatepass")


def replace_surrogates(text: str) -> str:
    """Lone surrogates (which UTF-8 cannot encode) become U+FFFD."""
    return _SURROGATE.sub(REPLACEMENT, text) if not text.isascii() and _SURROGATE.search(text) else text


def name_key(name: str) -> str:
    """The key two names clash on when Excel compares them case-insensitively (upper-cased, then
    case-folded: stricter than either alone, so `ı`/`i` and `ß`/`SS` clash too)."""
    return name.upper().casefold()


def xstring(text: str) -> str:
    """`text` as an ST_Xstring that decodes back to it: a literal `_xHHHH_` becomes `_x005F_xHHHH_`,
    overlapping ones too (`_x0041_x0042_`: both underscores that start one are escaped)."""
    return _XSTRING_START.sub("_x005F_", text) if "_x" in text else text


def xml_attribute(text: str) -> str:
    """`text` escaped for a double-quoted XML attribute (it holds no control characters)."""
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def is_cell_reference(name: str) -> bool:
    """Whether Excel could read `name` as a cell reference: letters then digits (A1 style, even past
    the grid), or R1C1 style (`R`, `C`, `R1C1`, `RC7`)."""
    return bool(_A1_LIKE.fullmatch(name)) or (bool(name) and _R1C1.fullmatch(name) is not None)


def _with_suffix(base: str, suffix: str, limit: int, measure: Callable[[str], int] = utf16_len) -> str:
    """`base + suffix`, `base` cut to its longest prefix for which the whole stays within `limit`
    (as `measure` counts; it never shrinks as the prefix grows)."""
    cut = cut_utf16(base, limit - utf16_len(suffix))
    if measure(cut + suffix) <= limit:
        return cut + suffix
    lo, hi = 0, len(cut)  # measure(cut[:lo] + suffix) <= limit < measure(cut[:hi] + suffix)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if measure(cut[:mid] + suffix) <= limit else (lo, mid)
    return cut[:lo] + suffix


# ----------------------------------------------------------------------------- sheets


def clean_sheet_name(name: object) -> str:
    """A sheet name Excel accepts (not yet unique): forbidden characters become `_`, cut to 31
    units, no apostrophe at either end, `Sheet` if nothing is left."""
    text = _SHEET_BAD.sub("_", replace_surrogates(str(name)))
    text = _break_xstring(text, "-")
    text = cut_utf16(text, MAX_SHEET_NAME).strip("'")
    return text or "Sheet"


def _break_xstring(text: str, end: str) -> str:
    """A literal `_xHHHH_` with its last `_` replaced by `end`, so no reader decodes it."""
    return re.sub(r"(_x[0-9A-Fa-f]{4})_", lambda m: m.group(1) + end, text) if "_x" in text else text


class SheetNames:
    """Hands out valid sheet names, unique case-insensitively: a clash gets ` (2)`, ` (3)`, ..."""

    def __init__(self) -> None:
        self._taken: set[str] = set(RESERVED_SHEET_NAMES)

    def claim(self, wanted: object) -> str:
        base = clean_sheet_name(wanted)
        name, k = base, 1
        while name_key(name) in self._taken:
            k += 1
            name = _with_suffix(base, f" ({k})", MAX_SHEET_NAME)
        self._taken.add(name_key(name))
        return name


# ----------------------------------------------------------------------------- tables


class TableNames:
    """Table names for sheets: `tbl<Sheet>`, never a cell reference (`tbl2026` becomes `tbl_2026`),
    unique across the workbook case-insensitively (`Raw-CRM`, `Raw_CRM`: `tblRaw_CRM`, `tblRaw_CRM_2`)."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def claim(self, sheet: str) -> str:
        return self.claim_name(table_name(sheet))

    def claim_name(self, wanted: str) -> str:
        """`wanted` as a table name (a sheet's form names its own tables), made unique the same way."""
        base = _break_xstring(wanted, ".")
        if is_cell_reference(base):
            base = "tbl_" + base[3:]
        base = cut_utf16(base, MAX_NAME)
        name, k = base, 1
        while name_key(name) in self._taken:
            k += 1
            name = _with_suffix(base, f"_{k}", MAX_NAME)
        self._taken.add(name_key(name))
        return name


# ----------------------------------------------------------------------------- table columns


def _fit_column(text: str, suffix: str = "") -> str:
    return _with_suffix(text, suffix, MAX_NAME, measure=lambda s: utf16_len(xstring(s)))


def clean_header(header: object, position: int) -> str:
    """A table column name Excel accepts (not yet unique): control characters (TAB, CR and LF too)
    and U+FFFE/U+FFFF become spaces, lone surrogates U+FFFD, `Column<n>` if blank, cut so its
    escaped form (see `xstring`) is within 255 units."""
    text = replace_surrogates(str(header))
    if _CONTROL.search(text):
        text = _CONTROL.sub(" ", text)
    if not text.strip():
        return f"Column{position + 1}"
    return _fit_column(text)


def clean_headers(headers: list[object]) -> list[str]:
    """Every header cleaned (`clean_header`) and unique case-insensitively: a repeat gets ` (2)`, ..."""
    cleaned = [clean_header(h, j) for j, h in enumerate(headers)]
    taken = {name_key(h) for h in cleaned}
    if len(taken) == len(cleaned):
        return cleaned
    seen: set[str] = set()
    out = []
    for text in cleaned:
        name, k = text, 1
        while name_key(name) in seen or (k > 1 and name_key(name) in taken):
            k += 1
            name = _fit_column(text, f" ({k})")
        seen.add(name_key(name))
        out.append(name)
    return out


def column_attribute(name: str) -> str:
    """A clean column name as the value of a `<tableColumn name="...">` attribute."""
    return xml_attribute(xstring(name))
