"""flows.stage_meter: each step's time and peak memory, and the run summary at -v."""

from __future__ import annotations

import time

import numpy as np

from flows.cli import main
from flows.stage_meter import StageTime, measured, rss_mib


def test_a_stage_sees_the_peak_of_memory_it_held_only_briefly() -> None:
    stages: list[StageTime] = []
    before = rss_mib()
    with measured(stages, "big"):
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        time.sleep(0.1)  # a few samples while it is held
        del block
    with measured(stages, "small"):
        time.sleep(0.05)
    big, small = stages
    assert (big.name, small.name) == ("big", "small")
    assert big.peak_mib - before > 150
    assert small.peak_mib < big.peak_mib - 150  # the released block is not counted again
    assert big.seconds >= 0.1 and small.seconds >= 0.05


def test_a_stage_that_raises_is_still_recorded() -> None:
    stages: list[StageTime] = []
    try:
        with measured(stages, "fails"):
            raise ValueError("boom")
    except ValueError:
        pass
    assert [s.name for s in stages] == ["fails"]


def test_the_run_summary_at_v_lists_every_step(tmp_path, capsys) -> None:
    (tmp_path / "d.csv").write_text("opportunity_id,stage,created_date,amount\n1,Proposal,2026-01-05,100\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sources: [{name: s, type: csv, path: d.csv}]\ndestinations: [{type: file, path: o.xlsx}]\n")
    assert main(["run", "--config", str(cfg), "--as-of", "2026-02-01", "--no-prefect"]) == 0
    assert "stages:" not in capsys.readouterr().out
    for extra, steps in ((["--full-refresh"], ["extract", "validate", "analyze", "render", "publish", "commit"]),
                         ([], ["extract", "render", "publish", "commit"])):  # nothing changed: written again
        assert main(["-v", "run", "--config", str(cfg), "--as-of", "2026-02-01", "--no-prefect", *extra]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  stages: "))
        names = [part.split()[0] for part in line.removeprefix("  stages: ").split(", ")]
        assert names == steps
        assert all("MiB peak" in part for part in line.split(", "))
