"""Load a YAML config: `${ENV}` interpolation, validation, and every problem reported at once."""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from config.checks import path_clash_problems as _path_clash_problems
from config.models import (
    DEFAULT_STAGES,
    AppConfig,
    after_stage_problem,
    product_mix_problem,
    stage_map_problems,
)
from connectors import redact
from connectors.registry import ByType

SECRET_KEYS = frozenset({"token", "client_secret", "token_secret", "password", "secret"})
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_DEPTH = 64  # nesting of mappings and lists; a config needs under 10
MAX_ALIASES = 100  # `*alias` references; a config uses a handful, an alias bomb thousands
MAX_NODES = 200_000  # values once aliases are expanded (what interpolation and validation walk)


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 would turn `on:` (notify) or `no` into booleans."""


_Yaml12Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason, each naming its key."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{self.path}: " + "; ".join(problems))

    def render(self) -> str:
        lines = [f"config error in {self.path}:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class LoadedConfig:
    config: AppConfig
    path: Path
    sha256: str
    secrets: tuple[str, ...]  # values that came from the environment: never log or write them

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def _cross_key_problems(data: dict[str, Any]) -> list[str]:
    """Checks between keys (stage references, product mix) on the raw data.

    pydantic skips a model's own checks once any of its fields failed; running these here as
    well keeps the promise of reporting every problem at once.
    """
    problems: list[str] = []
    pipeline = data.get("pipeline") or {}
    stages = pipeline.get("stages") if isinstance(pipeline, dict) else None
    names: list[str] | None = None
    if stages is None:
        names = [s.name for s in DEFAULT_STAGES]
    elif isinstance(stages, list) and all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in stages):
        names = [s["name"] for s in stages]
    if names is not None and isinstance(pipeline, dict):
        qual = pipeline.get("qualification")
        after = qual.get("after_stage") if isinstance(qual, dict) else None
        if isinstance(after, str) and (problem := after_stage_problem(after, names)):
            problems.append(f"pipeline: {problem}")
        sources = data.get("sources")
        for i, src in enumerate(sources if isinstance(sources, list) else []):
            stage_map = src.get("stage_map") if isinstance(src, dict) else None
            if isinstance(stage_map, dict) and all(isinstance(v, str) for v in stage_map.values()):
                problems += stage_map_problems(i, stage_map, names)
    targets = data.get("targets")
    mix = targets.get("product_mix") if isinstance(targets, dict) else None
    numbers = isinstance(mix, dict) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in mix.values())
    if numbers and (problem := product_mix_problem(mix)):
        problems.append(problem)
    return problems


def _interpolate(
    node: Any, where: str, env: dict[str, str], missing: list[str], used: list[str], unset_keys: set[str]
) -> Any:
    if isinstance(node, dict):
        return {
            k: _interpolate(v, f"{where}.{k}" if where else str(k), env, missing, used, unset_keys)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, f"{where}[{i}]", env, missing, used, unset_keys) for i, v in enumerate(node)]
    if isinstance(node, str):

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                missing.append(f"{where}: environment variable {name} is not set (export {name}=...)")
                unset_keys.add(where)
                return ""
            used.append(env[name])
            return env[name]

        return _ENV_REF.sub(repl, node)
    return node


def _model_for(loc: tuple[Any, ...], data: Any) -> type[BaseModel] | None:
    """Walk the model tree (and the data, for a block whose `type` picks its model) along an error
    location to find the model that owns the last key."""
    annotation: Any = AppConfig
    node = data
    for part in loc[:-1]:
        if isinstance(part, int):
            annotation = _item(annotation)
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            continue
        model = _model(annotation, node)
        field = model.model_fields.get(str(part)) if model is not None else None
        if field is None:
            return None
        annotation = field.annotation
        node = node.get(part) if isinstance(node, dict) else None
    return _model(annotation, node)


def _model(annotation: Any, node: Any) -> type[BaseModel] | None:
    """The model behind an annotation (`X | None`, `Annotated[...]`, a registry-typed block)."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, ByType):
            return meta.model(node.get("type")) if isinstance(node, dict) else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (model := _model(arg, node)) is not None:
            return model
    return None


def _item(annotation: Any) -> Any:
    """The item annotation of `list[X]` (or `list[X] | None`)."""
    if get_origin(annotation) in (list, tuple):
        return get_args(annotation)[0]
    for arg in get_args(annotation):
        if get_origin(arg) in (list, tuple):
            return get_args(arg)[0]
    return None


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(err: dict[str, Any], data: Any) -> str:
    loc = tuple(err["loc"])
    key = _dotted(loc)
    if err["type"] == "extra_forbidden":
        model = _model_for(loc, data)
        hint = ""
        if model is not None:
            close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
            if close:
                hint = f"; did you mean '{close[0]}'?"
        return f"{key}: unknown key{hint}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{key}: {msg}" if loc else msg  # top-level checks name their keys themselves


def _shape_problem(text: str) -> str | None:
    """Why the YAML is too deep or expands too far (alias bombs), from its events, before it is
    built into a tree; None when it is within MAX_DEPTH / MAX_ALIASES / MAX_NODES."""
    stack: list[list[Any]] = []  # per open collection: [expanded size, anchor]
    sizes: dict[str, int] = {}  # anchor -> expanded size of its node
    aliases = 0
    for event in yaml.parse(text, Loader=_Yaml12Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                return f"the YAML is nested deeper than {MAX_DEPTH} levels; a config needs only a few"
            stack.append([1, event.anchor])
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            size, anchor = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                return f"the YAML uses more than {MAX_ALIASES} aliases (*name); write the values out instead"
            size, anchor = sizes.get(event.anchor, 1), None
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        if stack:
            stack[-1][0] += size
            if stack[-1][0] > MAX_NODES:
                return (f"the YAML expands to more than {MAX_NODES:,} values through its aliases (*name); "
                        "an alias bomb? write the values out instead")
    return None


def load_config(path: str | Path, env: dict[str, str] | None = None) -> LoadedConfig:
    """Read, interpolate and validate a config file. Raises ConfigError listing every problem."""
    p = Path(path).expanduser().resolve()
    try:
        raw_bytes = p.read_bytes()
    except OSError as exc:
        raise ConfigError(p, [f"cannot read the config file: {exc.strerror}"]) from exc
    try:
        text = raw_bytes.decode("utf-8")
        shape = _shape_problem(text)
        if shape is not None:
            raise ConfigError(p, [shape])
        data = yaml.load(text, Loader=_Yaml12Loader) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(p, [f"not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise ConfigError(p, ["the top level must be a mapping of keys"])
    missing: list[str] = []
    used: list[str] = []
    unset_keys: set[str] = set()  # keys whose variable is missing: their follow-on errors say nothing new
    data = _interpolate(data, "", dict(os.environ if env is None else env), missing, used, unset_keys)
    problems = list(missing)
    config: AppConfig | None = None
    try:
        config = AppConfig.model_validate(data, context={"base_dir": str(p.parent)})
    except ValidationError as exc:
        for err in exc.errors():
            if _dotted(tuple(err["loc"])) not in unset_keys:
                problems.append(_describe(err, data))
        problems += [c for c in _cross_key_problems(data) if not any(c in q for q in problems)]
    secrets = {s for s in [*used, *_secret_values(data), *_url_passwords(data)] if len(s) >= redact.MIN_LENGTH}
    redact.register(secrets)
    redact.install_log_redaction()  # every later log record of this process: no secret, whoever logs it
    if problems or config is None:
        raise ConfigError(p, [redact.redact(q, secrets) for q in problems])
    problems = _path_clash_problems(config, p)
    if problems:  # they quote paths, which may hold a `${...}` value
        raise ConfigError(p, [redact.redact(q, secrets) for q in problems])
    return LoadedConfig(
        config=config,
        path=p,
        sha256=hashlib.sha256(raw_bytes).hexdigest(),
        secrets=tuple(sorted(secrets)),
    )


def _url_passwords(node: Any) -> list[str]:
    """The password of every `scheme://user:password@host` in any string of the config."""
    if isinstance(node, dict):
        return [s for v in node.values() for s in _url_passwords(v)]
    if isinstance(node, list):
        return [s for v in node for s in _url_passwords(v)]
    return redact.url_passwords(node) if isinstance(node, str) and "://" in node else []


def _secret_values(node: Any) -> list[str]:
    """Values of secret-named keys anywhere in the config (tokens, client secrets)."""
    if isinstance(node, dict):
        out = [str(v) for k, v in node.items() if k in SECRET_KEYS and isinstance(v, str | int)]
        for v in node.values():
            out += _secret_values(v)
        return out
    if isinstance(node, list):
        return [s for v in node for s in _secret_values(v)]
    return []
