"""The writer hands sheet blocks to one deflate thread: up to IN_FLIGHT queued, so generating the next
block overlaps compressing the last ones, and memory stays bounded (never more than IN_FLIGHT waiting)."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

from connectors.workbook.xlsx_writer import IN_FLIGHT, _Zipper


def test_blocks_queue_up_to_in_flight_then_wait_for_the_oldest(tmp_path: Path) -> None:
    gate = threading.Event()  # closed: the deflate thread is stuck on the first write
    blocks = [f"<row r=\"{i}\"/>" for i in range(IN_FLIGHT + 2)]
    queued: list[int] = []
    target = tmp_path / "out.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst, _Zipper(dst) as zipper:
        write = zipper._write

        def slow_write(data: bytes) -> None:
            assert gate.wait(10)
            write(data)

        zipper._write = slow_write  # type: ignore[method-assign]
        zipper.begin("xl/worksheets/sheet1.xml", b"<sheetData>", False)

        def feed() -> None:
            for i, b in enumerate(blocks):
                zipper.block(b)
                queued.append(i)

        feeder = threading.Thread(target=feed)
        feeder.start()
        feeder.join(0.5)
        # begin's write is still pending: IN_FLIGHT - 1 blocks fit beside it, the next one waits
        assert queued == list(range(IN_FLIGHT - 1))
        gate.set()
        feeder.join(10)
        assert queued == list(range(len(blocks)))
        zipper.end(b"</sheetData>")
        zipper.wait()
    with zipfile.ZipFile(target) as z:
        assert z.read("xl/worksheets/sheet1.xml") == ("<sheetData>" + "".join(blocks) + "</sheetData>").encode()
