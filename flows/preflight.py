"""Checks a run makes before anything slow starts (Prefect, a server, a network call).

`source_file_problems` is what `validate` reports and what `run` refuses to start with: every
file a source reads must be a regular, readable, non-empty file. Each problem names the
source's key, so the CLI shows it as a config error (exit 2).
"""

from __future__ import annotations

import os
from pathlib import Path

from config.models import AppConfig


def source_files(cfg: AppConfig) -> list[tuple[str, str, str]]:
    """(key, source name, path) of every file the sources read."""
    out = []
    for i, src in enumerate(cfg.sources):
        if (path := getattr(src, "path", None)) is not None:
            out.append((f"sources[{i}].path", src.name, path))
        if (hist := getattr(src, "stage_history", None)) is not None:
            out.append((f"sources[{i}].stage_history.path", src.name, hist.path))
    return out


def source_file_problems(cfg: AppConfig) -> list[str]:
    """One line per source file that cannot be read: missing, not a regular file, or unreadable."""
    problems = []
    for key, name, path in source_files(cfg):
        p = Path(path)
        if not p.exists():
            why = "file not found"
        elif not p.is_file():
            why = "not a regular file (a source must be a file, not a folder, device or pipe)"
        elif not os.access(p, os.R_OK):
            why = "file not readable (check its permissions)"
        else:
            continue
        problems.append(f"{key} ({name}): {why}: {path}")
    return problems
