"""Checks of a validated config against the files around it: what a destination may not overwrite,
and which raw-sheet names the workbook cannot hold. Each problem names its key(s) and the fix."""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Any

from config.models import AppConfig, FileDestinationConfig
from config.workbook import SHEET_ORDER, table_name

# sheets the analytics add besides SHEET_ORDER (chart data), and Excel's own reserved name
HELPER_SHEETS = ("Won by month", "Flags by rule", "Actions")
EXCEL_RESERVED = ("History",)
_BAD_SHEET_CHARS = re.compile(r"[\[\]:*?/\\]")
_VALUE = r"[0-9][0-9A-Za-z\-]*"  # what {as_of} (2026-11-27) and {period} (2026-Q4, 2026-11, 2026) become


def _real(path: str | Path) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def _protected(cfg: AppConfig, config_path: Path) -> list[tuple[str, str, bool]]:
    """(key, real path, is a folder) of everything a destination must not replace."""
    out: list[tuple[str, str, bool]] = [("the config file", _real(config_path), False)]
    for i, src in enumerate(cfg.sources):
        for key in ("path", "ca_bundle", "private_key_path"):
            value = getattr(src, key, None)
            if value:
                out.append((f"sources[{i}].{key}", _real(value), False))
        hist = getattr(src, "stage_history", None)
        if hist is not None:
            out.append((f"sources[{i}].stage_history.path", _real(hist.path), False))
    base = config_path.parent
    out.append(("the state folder (.state/ next to the config)", _real(base / ".state"), True))
    url = cfg.state.url or ""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        db = Path(url[len("sqlite:///"):].partition("?")[0])
        db = db if db.is_absolute() else base / db
        out.append(("state.url (the state database)", _real(db), False))
        out.append(("the state folder (validated rows beside state.url)", _real(db.parent / "validated"), True))
    return out


def _dest_matcher(template: str) -> tuple[str, re.Pattern[str]]:
    """(the real path up to the first {placeholder}, a pattern over real paths it can produce)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError:  # a malformed placeholder: the publish step names it
        parts = [(template, None, None, None)]
    head = parts[0][0] if parts[0][1] is not None else "".join(p[0] for p in parts)
    if parts[0][1] is None:  # no placeholder: the file itself, symlinks followed
        real_head = _real(head)
    else:
        folder, _, stem = head.rpartition("/") if "/" in head else (".", "", head)
        real_head = os.path.join(_real(folder or "/"), stem)
    rx = re.escape(real_head)
    if parts[0][1] is not None:
        rx += _VALUE + "".join(re.escape(lit) + (_VALUE if name is not None else "") for lit, name, _, _ in parts[1:])
    return real_head, re.compile(rx + r"\Z")


def _destinations(cfg: AppConfig) -> list[tuple[str, FileDestinationConfig]]:
    out = [(f"destinations[{i}]", d) for i, d in enumerate(cfg.destinations)]
    for r, rep in enumerate(cfg.reports):
        out += [(f"reports[{r}].destinations[{i}]", d) for i, d in enumerate(rep.destinations)]
    return [(k, d) for k, d in out if isinstance(d, FileDestinationConfig)]


def path_clash_problems(cfg: AppConfig, config_path: Path) -> list[str]:
    """A file destination that is (or resolves to) a source, the config, or anything in a state folder."""
    protected = _protected(cfg, config_path)
    problems: list[str] = []
    for key, dest in _destinations(cfg):
        head, pattern = _dest_matcher(dest.path)
        for what, target, folder in protected:
            if not (pattern.match(target) or (folder and (head + "/").startswith(target + os.sep))):
                continue
            where = "is inside" if folder else "is the same file as"
            shown = "" if what.startswith("the ") else f" ({target})"
            problems.append(f"{key}.path: '{dest.path}' {where} {what}{shown}: the workbook would replace it; "
                            "write the workbook to another path")
            break
    return problems + raw_sheet_problems(cfg)


def raw_sheet_problems(cfg: AppConfig) -> list[str]:
    """`raw_sheet` names the workbook cannot hold: its own sheets, Excel's rules, two sheets whose
    tables would get the same name (`A-B` and `A_B` are both tblA_B)."""
    reserved = {n.lower(): n for n in (*SHEET_ORDER, *HELPER_SHEETS, *EXCEL_RESERVED)}
    tables: dict[str, str] = {table_name(n).lower(): f"the workbook's {n} sheet" for n in reserved.values()}
    problems: list[str] = []
    for i, src in enumerate(cfg.sources):
        name: Any = src.raw_sheet
        if not name:
            continue
        key = f"sources[{i}].raw_sheet"
        base = re.sub(r" \(\d+\)$", "", name).lower()  # 'Opportunities (2)' is a split of Opportunities
        if name.lower() in reserved or base in reserved:
            problems.append(f"{key}: '{name}' is a sheet the workbook already has "
                            f"({reserved.get(name.lower()) or reserved[base]}); choose another name")
            continue
        if _BAD_SHEET_CHARS.search(name) or name != name.strip("'") or not name.strip():
            problems.append(f"{key}: '{name}' is not a valid Excel sheet name (no [ ] : * ? / \\, no leading "
                            "or trailing apostrophe)")
            continue
        table = table_name(name).lower()
        if table in tables:
            problems.append(f"{key}: '{name}' gets the same table name ({table_name(name)}) as {tables[table]}; "
                            "sheet names that differ only in punctuation or case clash: rename one")
            continue
        tables[table] = f"{key} ('{name}')"
    return problems
