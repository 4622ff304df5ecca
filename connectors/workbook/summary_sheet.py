"""The Summary sheet, written cell by cell with xlsxwriter (it is small): a title, status lines,
titled tables and native charts drawn from the data sheets.

Each table cell gets its number format from the table (per column, or per row), signed columns
show + / -, "better" columns get conditional formats (green when the change is good, red when it
is bad, whichever way is up), links become hyperlinks (http/https only). Charts get axis titles
and number formats, lines over bars on a second axis, stacked bars, and a lighter last bar for a
period still running. A waterfall (`WaterfallSpec`, connectors/workbook/waterfall.py) draws from
a sheet's form cells. Printed landscape, one page wide, the title row repeated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from config.workbook import ChartSpec, ColumnFormat, SummaryData, SummaryTable, WaterfallSpec
from connectors.workbook.waterfall import waterfall_chart

GOOD = {"bg_color": "#C6EFCE", "font_color": "#006100"}
BAD = {"bg_color": "#FFC7CE", "font_color": "#9C0006"}
SEVERITY_FILL = {"high": "#F8CBAD", "medium": "#FFE699", "low": "#DDEBF7"}
MAX_TEXT_WIDTH = 60.0
CHART_ROWS = 18  # rows one chart is tall (at 15 points a row: 360 px)
LINE_HEIGHT = 15.0
CHARS_PER_WIDTH = 1.15  # characters of 11-point text that fit in one unit of column width


_LINK = re.compile(r'(?i)https?://[^\s"<>\x00-\x1f\x7f]+')


def is_link(url: object) -> bool:
    """Only plain http(s) URLs become links (never javascript:, file: or text with spaces,
    quotes, angle brackets or control characters), at most 2,079 characters (Excel's limit)."""
    return isinstance(url, str) and len(url) <= 2079 and _LINK.fullmatch(url) is not None


class SummaryWriter:
    """Writes one SummaryData into a new worksheet of `wb`."""

    def __init__(self, wb: Any, number_format: Callable[[ColumnFormat], str | None],
                 cache: Callable[[pd.Series, bool], list[str | None]], clean: Callable[[str], str]):
        self.wb = wb
        self.number_format = number_format
        self.cache = cache  # a chart's cached points from the rows it draws (the layout holds a sample row)
        self.clean = clean  # text as a cell holds it
        self._formats: dict[tuple, Any] = {}

    def fmt(self, column: ColumnFormat | None = None, *, signed: bool = False, **props: Any) -> Any:
        code = self.number_format(column) if column else None
        if signed and code:
            code = f"+{code};-{code};{code}"
        key = (code, tuple(sorted(props.items())))
        if key not in self._formats:
            spec = dict(props)
            if code:
                spec["num_format"] = code
            self._formats[key] = self.wb.add_format(spec) if spec else None
        return self._formats[key]

    def write(self, data: SummaryData, frames: dict[str, pd.DataFrame]) -> None:
        ws = self.wb.add_worksheet("Summary")
        tables = data.shown_tables()
        widths = self._widths(data, tables)
        for j, w in enumerate(widths):
            ws.set_column(j, j, w)
        ws.write_string(0, 0, self.clean(data.title), self.fmt(bold=True, font_size=16))
        row = 1
        for line in data.lines:
            ws.write_string(row, 0, self.clean(line), self.fmt(font_size=11))
            row += 1
        breaks = []
        for table in tables:
            if table.page_break:
                breaks.append(row + 1)
            row = self._table(ws, table, row + 1, widths)
        self._charts(ws, data.charts, row + 1, widths, frames)
        if breaks:
            ws.set_h_pagebreaks(breaks)
        ws.set_landscape()
        ws.fit_to_pages(1, 0)
        ws.repeat_rows(0)
        ws.hide_gridlines(2)

    # ---------------------------------------------------------------- tables

    @staticmethod
    def _shown(table: SummaryTable) -> list[str]:
        return [str(c) for c in table.frame.columns if not str(c).startswith("_")]

    def _widths(self, data: SummaryData, tables: list[SummaryTable]) -> list[float]:
        """`data.widths`, else per column the longest header or value of any table (capped)."""
        if data.widths:
            return list(data.widths)
        widths: list[float] = []
        for table in tables:
            for j, c in enumerate(self._shown(table)):
                values = table.frame[c]
                width = 14.0
                if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_datetime64_any_dtype(values)):
                    width = min(max((len(str(v)) for v in values if isinstance(v, str)), default=0) + 2, MAX_TEXT_WIDTH)
                width = max(width, len(c) + 2, 10.0)
                if j >= len(widths):
                    widths.append(width)
                else:
                    widths[j] = max(widths[j], width)
        return widths

    def _table(self, ws: Any, table: SummaryTable, row: int, widths: list[float]) -> int:
        """Title, note, header and rows from `row`; text longer than its column wraps (the row
        grows to at most six lines). Returns the next free row."""
        cols = self._shown(table)
        frame = table.frame
        if table.title:
            ws.write_string(row, 0, self.clean(table.title), self.fmt(bold=True, font_size=13))
            row += 1
        if table.note:
            ws.write_string(row, 0, self.clean(table.note), self.fmt(italic=True, font_color="#595959"))
            row += 1
        header = self.fmt(bold=True, bottom=1, bg_color="#D9E1F2", text_wrap=True, valign="top")
        for j, c in enumerate(cols):
            ws.write_string(row, j, self.clean(c), header)
        row += 1
        good, bad = self.wb.add_format(GOOD), self.wb.add_format(BAD)
        spread = len(cols) - 1 if len(cols) < len(widths) else None  # the last column spans the rest of the grid
        for i in range(len(frame)):
            lines = 1
            for j, c in enumerate(cols):
                value = frame[c].iloc[i]
                fmt_name = (table.row_formats.get(c) or [None] * len(frame))[i] or table.formats.get(c)
                props: dict[str, Any] = {"valign": "top"}
                width = sum(widths[j:]) if j == spread else widths[j] if j < len(widths) else 10.0
                if isinstance(value, str) and len(value) > width * CHARS_PER_WIDTH:
                    props["text_wrap"] = True
                    lines = max(lines, math.ceil(len(value) / (width * CHARS_PER_WIDTH)))
                if isinstance(value, datetime | date | pd.Timestamp):
                    props["align"] = "center"
                elif isinstance(value, str) and j > 0:
                    props.update({"align": "left", "indent": 1})  # clear of the number to its left
                if j == spread and isinstance(value, str):
                    ws.merge_range(row, j, row, len(widths) - 1, self.clean(value), self.fmt(**props))
                    continue
                if table.highlight == c and value in SEVERITY_FILL:
                    props["bg_color"] = SEVERITY_FILL[value]
                url = frame[table.links[c]].iloc[i] if c in table.links else None
                if is_link(url) and isinstance(value, str):
                    ws.write_url(row, j, url, self.fmt(font_color="blue", underline=1, **props),
                                 string=self.clean(value))
                    continue
                self._cell(ws, row, j, value, self.fmt(fmt_name, signed=c in table.signed, **props))
                direction = (table.better.get(c) or [0] * len(frame))[i]
                if direction:
                    up, down = (good, bad) if direction > 0 else (bad, good)
                    ws.conditional_format(row, j, row, j, {"type": "cell", "criteria": ">", "value": 0, "format": up})
                    ws.conditional_format(row, j, row, j, {"type": "cell", "criteria": "<", "value": 0, "format": down})
            if lines > 1:
                ws.set_row(row, LINE_HEIGHT * min(lines, 6))
            row += 1
        return row

    def _cell(self, ws: Any, row: int, col: int, value: Any, fmt: Any) -> None:
        if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
            ws.write_blank(row, col, None, fmt)
        elif isinstance(value, bool | np.bool_):
            ws.write_boolean(row, col, bool(value), fmt)
        elif isinstance(value, int | float | np.integer | np.floating):
            ws.write_number(row, col, float(value), fmt)
        elif isinstance(value, datetime | date | pd.Timestamp):
            ws.write_datetime(row, col, pd.Timestamp(value).to_pydatetime().replace(tzinfo=None), fmt)
        else:
            ws.write_string(row, col, self.clean(str(value)), fmt)

    # ---------------------------------------------------------------- charts

    def _charts(self, ws: Any, charts: list[ChartSpec | WaterfallSpec], row: int, widths: list[float],
                frames: dict[str, pd.DataFrame]) -> None:
        total_px = sum(int(w * 7 + 5) for w in widths) or 900
        per_row = 2 if total_px >= 900 else 1
        width = max(420, (total_px - 20 * per_row) // per_row)
        placed = 0
        for spec in charts:
            if isinstance(spec, WaterfallSpec):
                chart = waterfall_chart(self.wb, spec, self.number_format("currency") or "#,##0.00")
            else:
                chart = self._chart(spec, frames)
            if chart is None:
                continue
            chart.set_size({"width": width, "height": int(CHART_ROWS * 20)})
            r = row + (placed // per_row) * (CHART_ROWS + 1)
            col_px = (placed % per_row) * (width + 20)
            ws.insert_chart(r, 0, chart, {"x_offset": col_px + 2, "y_offset": 4})
            placed += 1

    def _chart(self, spec: ChartSpec, frames: dict[str, pd.DataFrame]) -> Any:
        frame = frames.get(spec.sheet)
        rows = 0 if frame is None else len(frame)
        cols = [] if frame is None else [str(c) for c in frame.columns]
        wanted = [*spec.values, *spec.lines]
        if rows == 0 or spec.category not in cols or any(v not in cols for v in wanted):
            return None
        last = rows if spec.rows is None else min(rows, spec.rows)
        options: dict[str, Any] = {"type": spec.kind}
        if spec.stacked and spec.kind in ("column", "bar"):
            options["subtype"] = "stacked"
        chart = self.wb.add_chart(options)
        cat = cols.index(spec.category)
        categories = self.cache(frame.iloc[:last, cat], False)
        for v in spec.values:
            chart.add_series(self._series(spec, v, frame, cat, last, categories, bars=spec.kind in ("column", "bar")))
        line = None
        if spec.lines:
            line = self.wb.add_chart({"type": "line"})
            for v in spec.lines:
                line.add_series(self._series(spec, v, frame, cat, last, categories, bars=False))
            chart.combine(line)
        chart.set_title({"name": spec.title, "name_font": {"size": 12, "bold": True}})
        chart.set_legend({"position": "bottom"} if len(wanted) > 1 else {"none": True})
        value_axis: dict[str, Any] = {"major_gridlines": {"visible": True, "line": {"color": "#D9D9D9"}}}
        if spec.y_title:
            value_axis["name"] = spec.y_title
        if spec.y_format:
            value_axis["num_format"] = spec.y_format
        cat_axis: dict[str, Any] = {"name": spec.x_title} if spec.x_title else {}
        if spec.x_format:
            cat_axis.update({"date_axis": True, "num_format": spec.x_format})
            if spec.x_unit_days:
                cat_axis.update({"major_unit": spec.x_unit_days, "major_unit_type": "days"})
        if spec.kind == "bar":  # horizontal bars: categories top to bottom, values along x
            cat_axis["reverse"] = True
            chart.set_y_axis(cat_axis)
            chart.set_x_axis(value_axis)
        else:
            chart.set_x_axis(cat_axis)
            chart.set_y_axis(value_axis)
        if line is not None:  # a combined chart's second axis belongs to the secondary chart
            y2: dict[str, Any] = {}
            if spec.y2_title:
                y2["name"] = spec.y2_title
            if spec.y2_format:
                y2["num_format"] = spec.y2_format
            line.set_y2_axis(y2)
        return chart

    def _series(self, spec: ChartSpec, column: str, frame: pd.DataFrame, cat: int, last: int,
                categories: list[str | None], *, bars: bool) -> dict:
        c = [str(x) for x in frame.columns].index(column)
        series: dict[str, Any] = {
            "categories": [spec.sheet, 1, cat, last, cat],
            "values": [spec.sheet, 1, c, last, c],
            # the caches: the layout's sheets hold one sample row, the real rows come later
            "categories_data": categories,
            "values_data": self.cache(frame.iloc[:last, c], True),
        }
        if spec.names.get(column):
            series["name"] = self.clean(spec.names[column])
        else:
            series["name"] = [spec.sheet, 0, c]
            series["name_data"] = self.cache(pd.Series([column], dtype=object), False)
        colour = spec.colours.get(column)
        if bars:
            series["fill"] = {"color": colour or "#4472C4"}
            series["border"] = {"none": True}
            series["gap"] = 60
            if spec.muted_last and last >= 1:
                series["points"] = [None] * (last - 1) + [{"fill": {"color": "#B4C7E7"}}]
        else:
            series["line"] = {"color": colour or "#ED7D31", "width": 2.25}
            series["marker"] = {"type": "circle", "size": 6, "fill": {"color": colour or "#ED7D31"},
                                "border": {"color": colour or "#ED7D31"}}
        if column in spec.secondary:
            series["y2_axis"] = True
        return series


def write_summary(wb: Any, data: SummaryData, number_format: Callable[[ColumnFormat], str | None],
                  frames: dict[str, pd.DataFrame], *, cache: Callable[[pd.Series, bool], list[str | None]],
                  clean: Callable[[str], str]) -> None:
    """Add the Summary sheet to `wb` (see the module docstring); charts draw from `frames` (by
    written sheet name), `cache` gives their cached points, `clean` makes text fit a cell."""
    SummaryWriter(wb, number_format, cache, clean).write(data, frames)
