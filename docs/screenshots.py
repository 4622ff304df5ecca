"""`make screenshots`: the demo workbook's Summary and Actions sheets as PNG pictures for the README.

    python docs/screenshots.py [--as-of 2026-05-20] [--out docs/img] [--keep DIR]

Builds the demo in a temp folder exactly as `make run` does (demo-data with the 13 weekly
snapshots before as_of, so Trends, Changes and Movement have history, then the run), then prints the
workbook to PDF with LibreOffice (headless) and turns the Summary's pages (numbers and top deals;
mistakes and charts) and the first Actions page into PNG with pdftoppm. Exits 0 with a message, writing nothing, where LibreOffice
(Debian: libreoffice-calc) or pdftoppm (poppler-utils) is not installed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.cli import main as cli  # noqa: E402

DEFAULT_AS_OF = date(2026, 5, 20)  # mid-quarter and mid-month: the like-for-like line and a month "to date"
SHEETS = {"summary": "Summary", "actions": "Actions"}


def _tools() -> tuple[str, str] | None:
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    pdftoppm = shutil.which("pdftoppm")
    if soffice is None or pdftoppm is None:
        missing = [n for n, p in (("LibreOffice (apt-get install libreoffice-calc)", soffice),
                                  ("pdftoppm (apt-get install poppler-utils)", pdftoppm)) if p is None]
        print("make screenshots: skipped, not installed here: " + ", ".join(missing))
        return None
    return soffice, pdftoppm


def build_demo(work: Path, as_of: date) -> Path:
    """The demo workbook as of `as_of`, with a weekly snapshot series before it."""
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    for src in cfg["sources"]:
        src["path"] = str(work / "demo" / Path(src["path"]).name)
        if "stage_history" in src:
            src["stage_history"]["path"] = str(work / "demo" / "stage_history.csv")
    cfg["state"] = {"url": f"sqlite:///{work / 'state' / 'pipeline.db'}"}
    cfg["destinations"] = [{"type": "file", "path": str(work / "pipeline.xlsx")}]
    (work / "state").mkdir(mode=0o700)
    path = work / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    steps = [  # as `make run` does: the demo files and 13 weekly snapshots before as_of, then the run
        ["demo-data", "--out", str(work / "demo"), "--as-of", as_of.isoformat(), "--history-weeks", "13",
         "--config", str(path)],
        ["run", "--config", str(path), "--as-of", as_of.isoformat(), "--no-prefect"],
    ]
    for args in steps:
        if cli(args) != 0:
            raise SystemExit(f"make screenshots: `pipeline-sync {' '.join(args[:1])}` failed")
    return work / "pipeline.xlsx"


def _page_texts(pdf: Path) -> list[str]:
    out = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    return out.split("\f")


def render(book: Path, out: Path, soffice: str, pdftoppm: str, dpi: int) -> list[Path]:
    """PDF of the workbook, then one PNG per picture: the Summary's first page, the Actions' first page."""
    pdf_dir = book.parent / "pdf"
    subprocess.run([soffice, "--headless", "--norestore", "--convert-to", "pdf", "--outdir", str(pdf_dir), str(book)],
                   check=True, capture_output=True, timeout=600)
    pdf = pdf_dir / (book.stem + ".pdf")
    texts = _page_texts(pdf) if shutil.which("pdftotext") else []
    actions_page = next((i + 1 for i, t in enumerate(texts) if "next_step" in t and "record_url" in t), 2)
    pages = {"summary": 1, "actions": actions_page}
    if actions_page > 2:  # the Summary's second page: the mistakes and the charts
        pages["summary-charts"] = 2
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, page in pages.items():
        stem = out / name
        subprocess.run([pdftoppm, "-f", str(page), "-l", str(page), "-r", str(dpi), "-png", "-singlefile", str(pdf),
                        str(stem)], check=True, timeout=120)
        written.append(stem.with_suffix(".png"))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--as-of", type=date.fromisoformat, default=DEFAULT_AS_OF)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    p.add_argument("--dpi", type=int, default=110)
    p.add_argument("--keep", type=Path, help="keep the demo workbook and PDF in this folder")
    args = p.parse_args(argv)
    tools = _tools()
    if tools is None:
        return 0
    with tempfile.TemporaryDirectory(prefix="pipeline-sync-shots-") as tmp:
        work = Path(tmp)
        book = build_demo(work, args.as_of)
        for png in render(book, args.out, *tools, args.dpi):
            print(f"wrote {png}")
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy2(book, args.keep / book.name)
            shutil.copy2(book.parent / "pdf" / (book.stem + ".pdf"), args.keep / (book.stem + ".pdf"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
