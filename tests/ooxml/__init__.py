"""Test helpers that check a written workbook the way Excel would (issue 20).

`validator` runs Microsoft's Open XML SDK validator; `excel_rules` makes the checks the SDK
does not (table headers, names, text length, ZIP64, sheet bounds, optional XSD validation).
"""
