"""Which connector module extracts which source `type`."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

# type -> "module:function"; each function is `extract(cfg, ctx: ExtractContext) -> Extracted`
SOURCE_EXTRACTORS: dict[str, str] = {
    "csv": "connectors.sources.files:extract_csv",
    "excel": "connectors.sources.files:extract_excel",
    "hubspot": "connectors.sources.hubspot.extract:extract",
    "salesforce": "connectors.sources.salesforce:extract",
    "tableau": "connectors.sources.tableau:extract",
}


def extractor_for(source_type: str) -> Callable[..., Any]:
    module, func = SOURCE_EXTRACTORS[source_type].split(":")
    return getattr(import_module(module), func)
