"""How long each step of a run took and how much memory the process held at its peak during it.

`measured(stages, name)` times a block and samples the process's resident set size every 20 ms
on a background thread (Linux `/proc/self/statm`; elsewhere the process's lifetime peak from
`getrusage`), appending a `StageTime`. The sampler only reads a counter: it costs nothing
measurable, and it never resets the process's own high-water mark (benchmarks read VmHWM).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

SAMPLE_SECONDS = 0.02
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class StageTime:
    name: str
    seconds: float
    peak_mib: float  # the largest resident set seen during the stage


def rss_mib() -> float:
    """The process's resident set now (MiB); its lifetime peak where /proc is not there."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE / 2**20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@contextmanager
def measured(stages: list[StageTime], name: str) -> Iterator[None]:
    """Time the block and record its peak resident set into `stages` (also when it raises)."""
    peak = [rss_mib()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_SECONDS):
            peak[0] = max(peak[0], rss_mib())

    sampler = threading.Thread(target=sample, name=f"rss-{name}", daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        stages.append(StageTime(name, seconds, max(peak[0], rss_mib())))
