"""SOQL text helpers: the one literal escaper and the checks on a user's `where:` option.

Pure functions, used by the Salesforce config model (validation at load time) and by
connectors/sources/salesforce/query.py (query building).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime

# A field or one-level relationship path: `StageName`, `Region__c`, `Account.Industry`.
FIELD_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")
MAX_WHERE_CHARS = 4000

Scalar = str | int | float | bool | date | datetime | None

# Escapes SOQL understands inside a quoted string (\_ and \% are for LIKE patterns).
_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_VALID_ESCAPED = set("nrtbf\"'\\_%")
# Words that end or replace a WHERE clause: not allowed at the top level of `where:`.
_CLAUSE_WORDS = frozenset({
    "select", "from", "order", "group", "limit", "offset", "having", "for", "with", "using",
    "typeof", "update", "delete", "insert", "upsert", "merge", "undelete",
})


def soql_literal(value: Scalar) -> str:
    """`value` as a SOQL literal: strings quoted and escaped, datetimes in UTC, booleans, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} cannot be written in SOQL")
        return repr(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"datetime {value.isoformat()} has no time zone; SOQL needs an absolute time")
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return "'" + "".join(_ESCAPES.get(c, c) for c in value) + "'"
    raise ValueError(f"{type(value).__name__} values cannot be written in SOQL")


def check_field_path(name: str) -> str:
    if not FIELD_PATH.match(name or ""):
        raise ValueError(f"'{name}' is not a Salesforce field name (letters, digits, _ and one '.' per relationship)")
    return name


def build_where(conditions: Mapping[str, Scalar | Sequence[Scalar]]) -> str:
    """`{field: value}` / `{field: [values]}` -> `field = 'v' AND field IN ('a', 'b')`, values escaped."""
    if not conditions:
        raise ValueError("the mapping is empty; give at least one field: value")
    parts = []
    for field, value in conditions.items():
        check_field_path(field)
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError(f"'{field}': the list of values is empty")
            parts.append(f"{field} IN ({', '.join(soql_literal(v) for v in value)})")
        else:
            parts.append(f"{field} = {soql_literal(value)}")
    return " AND ".join(parts)


def validate_where(text: str) -> str:
    """Check a hand-written SOQL condition; returns it stripped or raises ValueError saying why.

    It must be one condition: balanced quotes (with valid escapes) and parentheses, no `;`,
    no control characters, and no clause or statement words (ORDER BY, LIMIT, SELECT, ...)
    outside parentheses; a semi-join such as `AccountId IN (SELECT Id FROM Account ...)` is fine.
    """
    text = (text or "").strip()
    if not text:
        raise ValueError("is empty; remove the key or write a condition such as StageName != 'Closed Lost'")
    if len(text) > MAX_WHERE_CHARS:
        raise ValueError(f"is longer than {MAX_WHERE_CHARS} characters")
    depth, i, word_start = 0, 0, None
    top_words: list[str] = []
    while i < len(text):
        c = text[i]
        if c.isalnum() or c == "_":
            word_start = i if word_start is None else word_start
            i += 1
            continue
        if word_start is not None:
            if depth == 0:
                top_words.append(text[word_start:i].lower())
            word_start = None
        if ord(c) < 32 and c not in "\n\t\r":
            raise ValueError(f"contains the control character {c!r} at position {i}")
        if c == ";":
            raise ValueError("contains ';': give one condition, not a second statement")
        if text.startswith(("--", "/*"), i):
            raise ValueError(f"contains '{text[i:i + 2]}' at position {i}: SOQL has no comments")
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"closes a parenthesis it never opened at position {i}")
        elif c == "'":
            i = _skip_string(text, i)
            continue
        elif c == '"':
            raise ValueError('uses a double quote: SOQL strings are in single quotes')
        i += 1
    if word_start is not None and depth == 0:
        top_words.append(text[word_start:].lower())
    if depth:
        raise ValueError("has an unclosed '('")
    bad = [w.upper() for w in top_words if w in _CLAUSE_WORDS]
    if bad:
        raise ValueError(
            f"contains {bad[0]}: write only a condition (the query's SELECT, ORDER BY and LIMIT are "
            "built by pipeline-sync)"
        )
    return text


def _skip_string(text: str, start: int) -> int:
    """Index just after the string literal opening at `start`."""
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in _VALID_ESCAPED:
                raise ValueError(f"has an invalid escape at position {i} inside a string (use \\' for a quote)")
            i += 2
            continue
        if c == "'":
            return i + 1
        i += 1
    raise ValueError(f"has a string starting at position {start} that is never closed with '")


def where_clause(where: str | Mapping[str, Scalar | Sequence[Scalar]] | None) -> str | None:
    """The SOQL condition a `where:` option stands for (None when unset)."""
    if where is None:
        return None
    return validate_where(where) if isinstance(where, str) else build_where(where)
