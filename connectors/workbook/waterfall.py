"""A waterfall chart in xlsxwriter, which has none: a stacked column whose first series (the
running total below each bar) is drawn without fill or line, so the visible bars float.

The sheet holds, per category row, four columns: base (invisible), rise (+ bars), fall (- bars)
and total (start and end). Blank cells draw nothing and carry no label.
"""

from __future__ import annotations

from typing import Any

from config.workbook import WaterfallSpec


def waterfall_chart(workbook: Any, spec: WaterfallSpec, currency_format: str) -> Any:
    """The chart for `spec` (insert it with `worksheet.insert_chart`)."""
    chart = workbook.add_chart({"type": "column", "subtype": "stacked"})
    cats = [spec.sheet, spec.first_row, spec.category_col, spec.last_row, spec.category_col]

    def series(col: int, name: str, colour: str | None, sign: str = "") -> None:
        opts: dict[str, Any] = {"name": name, "categories": cats, "gap": 60,
                                "values": [spec.sheet, spec.first_row, col, spec.last_row, col]}
        if colour is None:
            opts.update({"fill": {"none": True}, "border": {"none": True}})
        else:
            opts.update({"fill": {"color": colour}, "border": {"none": True},
                         "data_labels": {"value": True, "position": "inside_end", "font": {"size": 8},
                                         "num_format": (f'"{sign}"' if sign else "") + currency_format.replace(".00", "") + ";;"}})
        # ";;": the negative and zero sections are empty, so a category that did not move has no "+$0" label
        chart.add_series(opts)

    series(spec.base_col, "base", None)
    series(spec.rise_col, "added", "#70AD47", "+")
    series(spec.fall_col, "taken out", "#E46C5A", "-")
    series(spec.total_col, "pipeline", "#4472C4")
    chart.set_title({"name": spec.title, "name_font": {"size": 12}})
    chart.set_legend({"none": True})
    chart.set_x_axis({"num_font": {"rotation": -45}})
    chart.set_y_axis({"num_format": currency_format.replace(".00", ""), "major_gridlines": {"visible": True},
                      "min": 0})  # from zero: an axis cut at the start value would make small moves look huge
    chart.set_chartarea({"border": {"none": True}})
    chart.set_size({"width": 560, "height": 300})
    chart.show_blanks_as("gap")
    return chart
