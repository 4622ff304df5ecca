"""Every source and destination `type`, one line each.

The config loader (type names, the model that validates a block), the flow (which extractor,
whether it gets the state database, which publisher), backfill and the stale fallback (who can
rebuild its rows from stored state) and the validated-rows cache (which code shapes a source's
rows) all read these two tables; nothing else lists the types. A type registered at run time
(`register_source`, `register_destination`) is as good as a built-in one.

Models, extractors and publishers are named as `"module:attribute"` and imported on first use,
so this module imports nothing of the project: config, connectors and flows may all read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ValidationError, ValidationInfo, WrapValidator
from pydantic_core import PydanticCustomError

Ref = str | Callable[..., Any] | type  # "module:attribute" (imported when first used), or the object itself
Kind = Literal["source", "destination"]


@dataclass(frozen=True)
class SourceType:
    """A source `type`: `extractor(cfg, ctx: ExtractContext) -> Extracted`."""

    name: str
    config: Ref  # the pydantic model of its config block; its `type` field is Literal[name]
    extractor: Ref
    keeps_state: bool = False  # the extractor gets the state database (ctx.engine) for cursors and records
    rebuilds_history: Ref | None = None  # `from_state(cfg, payloads) -> Extracted`: backfill, stale fallback
    shapes_rows: tuple[str, ...] = ()  # modules, besides the extractor's own, whose code shapes its rows
    local: bool = False  # reads files on this machine (nothing to contact)
    label: str = ""  # how messages name it (default: `name`)


@dataclass(frozen=True)
class DestinationType:
    """A destination `type`: `publisher(dest_cfg, staged: Path, ctx: PublishContext) -> str`."""

    name: str
    config: Ref
    publisher: Ref


@dataclass(frozen=True)
class PublishContext:
    """What a run hands every publisher. It returns where the workbook went (and any note for the user)."""

    as_of: date
    period: str  # the reporting period's label, e.g. 2026-Q4 (fills `{period}`)
    open_state: Callable[[], Any]  # the run's state database engine, opened on first use
    sleep: Callable[[float], None] | None = None  # the run's retry sleep (None: the default)

    @property
    def engine(self) -> Any:
        return self.open_state()


_SOURCES: dict[str, SourceType] = {t.name: t for t in (
    SourceType("csv", "config.models.sources:CsvSourceConfig", "connectors.sources.files:extract_csv",
               local=True, label="CSV"),
    SourceType("excel", "config.models.sources:ExcelSourceConfig", "connectors.sources.files:extract_excel",
               local=True, label="Excel"),
    SourceType("hubspot", "config.models.sources:HubSpotSourceConfig", "connectors.sources.hubspot.extract:extract",
               keeps_state=True, rebuilds_history="connectors.sources.hubspot.extract:from_state",
               shapes_rows=("connectors.sources.hubspot", "connectors.sources.incremental",
                            "connectors.state.field_history"), label="HubSpot"),
    SourceType("salesforce", "config.models.sources:SalesforceSourceConfig", "connectors.sources.salesforce:extract",
               keeps_state=True, rebuilds_history="connectors.sources.salesforce:from_state",
               shapes_rows=("connectors.sources.salesforce", "connectors.sources.incremental", "config.soql"),
               label="Salesforce"),
    SourceType("tableau", "config.models.sources:TableauSourceConfig", "connectors.sources.tableau:extract",
               shapes_rows=("connectors.sources.tableau",), label="Tableau"),
)}
_DESTINATIONS: dict[str, DestinationType] = {t.name: t for t in (
    DestinationType("file", "config.models.destinations:FileDestinationConfig",
                    "connectors.destinations.local_file:publish_to"),
    DestinationType("onedrive", "config.models.destinations:OneDriveDestinationConfig",
                    "connectors.destinations.onedrive:publish"),
)}


def resolve(ref: Ref) -> Any:
    """The object a `"module:attribute"` names (imported now), or `ref` itself."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(import_module(module), attr)


# ----------------------------------------------------------------------------- the tables


def register_source(entry: SourceType, *, replace: bool = False) -> SourceType:
    """Add a source type (`replace`: over one of the same name)."""
    return _register(_SOURCES, entry, "source", replace)


def register_destination(entry: DestinationType, *, replace: bool = False) -> DestinationType:
    """Add a destination type (`replace`: over one of the same name)."""
    return _register(_DESTINATIONS, entry, "destination", replace)


def _register(table: dict[str, Any], entry: Any, kind: str, replace: bool) -> Any:
    if entry.name in table and not replace:
        raise ValueError(f"{kind} type {entry.name!r} is already registered")
    table[entry.name] = entry
    return entry


def unregister_source(name: str) -> None:
    _SOURCES.pop(name, None)


def unregister_destination(name: str) -> None:
    _DESTINATIONS.pop(name, None)


def source_types() -> tuple[str, ...]:
    return tuple(_SOURCES)


def destination_types() -> tuple[str, ...]:
    return tuple(_DESTINATIONS)


def source_type(name: str) -> SourceType:
    """The registered source type `name` (KeyError naming the known types when none is)."""
    try:
        return _SOURCES[name]
    except KeyError:
        raise KeyError(f"unknown source type {name!r}; known: {', '.join(_SOURCES)}") from None


def destination_type(name: str) -> DestinationType:
    try:
        return _DESTINATIONS[name]
    except KeyError:
        raise KeyError(f"unknown destination type {name!r}; known: {', '.join(_DESTINATIONS)}") from None


def extractor_for(name: str) -> Callable[..., Any]:
    return resolve(source_type(name).extractor)


def publisher_for(name: str) -> Callable[..., Any]:
    return resolve(destination_type(name).publisher)


def history_rebuilder(name: str) -> Callable[..., Any] | None:
    """`from_state(cfg, payloads)` of a source type that keeps its records, else None."""
    ref = source_type(name).rebuilds_history
    return None if ref is None else resolve(ref)


def row_code_files(name: str) -> list[Path]:
    """The source files of every module that shapes a source type's rows: its extractor's module
    and `shapes_rows` (a package stands for all its modules), found without importing them (the
    validated-rows cache hashes them)."""
    entry = source_type(name)
    modules = [m for m in (_module_of(entry.extractor), *entry.shapes_rows) if m]
    files = []
    for module in dict.fromkeys(modules):
        spec = find_spec(module)
        if spec is None or spec.origin is None:
            raise ValueError(f"source type {name!r} names module {module!r}, which is not importable")
        if spec.submodule_search_locations:  # a package: every module in it
            files += sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.py"))
        else:
            files.append(Path(spec.origin))
    return list(dict.fromkeys(files))


def _module_of(ref: Ref) -> str | None:
    return ref.partition(":")[0] if isinstance(ref, str) else getattr(ref, "__module__", None)


# ----------------------------------------------------------------------------- config validation


@dataclass(frozen=True)
class ByType:
    """Marks a config annotation validated by the registered model its `type` names (config.loader reads it)."""

    kind: Kind

    def model(self, type_name: Any) -> type[BaseModel] | None:
        table = _SOURCES if self.kind == "source" else _DESTINATIONS
        entry = table.get(type_name) if isinstance(type_name, str) else None
        return None if entry is None else resolve(entry.config)

    def names(self) -> tuple[str, ...]:
        return source_types() if self.kind == "source" else destination_types()


def typed_config(kind: Kind) -> Any:
    """The annotation of one `sources:` / `destinations:` item: the registered model its `type` names
    validates it, so error locations stay those of the block (`sources[0].path`)."""
    marker = ByType(kind)

    def validate(value: Any, handler: Any, info: ValidationInfo) -> Any:
        known = ", ".join(repr(n) for n in marker.names())
        if isinstance(value, BaseModel):
            model = marker.model(getattr(value, "type", None))
            if model is not None and isinstance(value, model):
                return value
            value = value.model_dump()
        if not isinstance(value, dict):
            raise PydanticCustomError("model_type", "Input should be a mapping of keys (with a type: one of {known})",
                                      {"known": known})
        if "type" not in value:
            raise ValidationError.from_exception_data(kind, [{
                "type": PydanticCustomError("type_missing", "required key is missing; use one of {known}",
                                            {"known": known}),
                "loc": ("type",), "input": value}])
        model = marker.model(value["type"])
        if model is None:
            raise PydanticCustomError("type_unknown", "unknown type {got}; use one of {known}",
                                      {"got": repr(value["type"]), "known": known})
        return model.model_validate(value, context=info.context)

    return Annotated[Any, WrapValidator(validate), marker]
