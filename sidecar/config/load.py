"""Read YAML, expand ${env:...}, check against the schema and report every error at once."""

from __future__ import annotations

import enum
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from sidecar.config import schema
from sidecar.config.units import decode_hook

_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$")


class ConfigError(Exception):
    """All problems found in one configuration, each prefixed by its dotted path."""

    def __init__(self, errors: list[str], source: str = "<memory>") -> None:
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: {len(errors)} configuration error(s):\n" + "\n".join(
            f"  {e}" for e in errors))


# ------------------------------------------------------------------ env expansion


def expand_env(node: Any, path: str, errors: list[str], environ: Mapping[str, str]) -> Any:
    """Expand ${env:NAME} and ${env:NAME:-default}; a whole-value reference is re-read as YAML."""
    if isinstance(node, dict):
        return {k: expand_env(v, _join(path, str(k)), errors, environ) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, f"{path}[{i}]", errors, environ) for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                errors.append(f"{path}: environment variable {name} is not set "
                              f"(write ${{env:{name}:-default}} to give a default)")
                return ""
            return default
        return value

    whole = _ENV_REF.fullmatch(node)
    expanded = _ENV_REF.sub(replace, node)
    if whole is not None and whole.group(0) != "$$":
        # As in the Collector, `port: ${env:PORT}` yields an int, not the string "4317".
        try:
            parsed = yaml.safe_load(expanded) if expanded else expanded
        except yaml.YAMLError:
            return expanded
        if isinstance(parsed, (str, int, float, bool)):
            return parsed
    return expanded


# ------------------------------------------------------------------ schema walk


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_MSGSPEC_BOUND = re.compile(r"Expected `(\w+)` (>=|>|<=|<) ([-\d.e+]+)")
_MSGSPEC_TYPE = re.compile(r"Expected `([^`]+)`, got `([^`]+)`")


def _humanise(message: str) -> str:
    message = re.sub(r" - at `\$[^`]*`$", "", message)
    bound = _MSGSPEC_BOUND.match(message)
    if bound:
        number = bound.group(3)
        if number.endswith(".0"):
            number = number[:-2]
        return f"must be {bound.group(2)} {number}"
    wrong = _MSGSPEC_TYPE.match(message)
    if wrong:
        return f"must be {_article(wrong.group(1))}, got {wrong.group(2)}"
    return message


def _article(type_name: str) -> str:
    names = {"int": "an integer", "float": "a number", "str": "a string", "bool": "a boolean (true/false)",
             "array": "a list", "object": "a mapping", "int | null": "an integer or null",
             "float | null": "a number or null", "str | null": "a string or null",
             "array | null": "a list or null"}
    return names.get(type_name, f"a {type_name}")


def _struct_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _optional_struct(tp: Any) -> type | None:
    """The Struct in `X | None`, or X itself when tp is a Struct."""
    if is_struct(tp):
        return typing.cast(type, tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and is_struct(args[0]):
            return typing.cast(type, args[0])
    return None


def choices_of(tp: Any) -> list[str] | None:
    """Allowed values of a Literal or an enum (possibly optional), for a friendly message."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    for arg in args:
        if typing.get_origin(arg) is typing.Literal:
            return [str(v) for v in typing.get_args(arg)]
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            return [str(m.value) for m in arg]
    return None


def check_struct(value: Any, cls: type, path: str, errors: list[str]) -> Any:
    """Check `value` against Struct `cls`; return a normalised copy (null sub-sections become {})."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        errors.append(f"{path or '<root>'}: must be a mapping, got {_yaml_type(value)}")
        return value
    hints = _struct_hints(cls)
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    out: dict[str, Any] = {}
    for key, item in value.items():
        key_s = str(key)
        if key_s not in fields:
            known = ", ".join(sorted(fields))
            errors.append(f"{_join(path, key_s)}: unknown key (expected one of: {known})")
            continue
        out[key_s] = check_value(item, hints[fields[key_s].name], _join(path, key_s), errors)
    for name, f in fields.items():
        if f.required and name not in value:
            errors.append(f"{_join(path, name)}: required key is missing")
    return out


def check_value(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    struct = _optional_struct(tp)
    if struct is not None:
        if value is None and not is_struct(tp):
            # `grpc:` with no value means "enabled with defaults", as in the Collector.
            return check_struct({}, struct, path, errors)
        return check_struct(value, struct, path, errors)
    origin = typing.get_origin(tp)
    base_args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and value is None and type(None) in base_args:
        return None
    if origin in (typing.Union, types.UnionType):
        non_null = [a for a in base_args if a is not type(None)]
        if len(non_null) == 1:
            return check_value(value, non_null[0], path, errors)
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: must be a list, got {_yaml_type(value)}")
            return value
        return [check_value(v, base_args[0], f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: must be a mapping, got {_yaml_type(value)}")
            return value
        return {str(k): check_value(v, base_args[1], _join(path, str(k)), errors) for k, v in value.items()}
    choices = choices_of(tp)
    if choices is not None:
        if str(value) not in choices or not isinstance(value, str):
            errors.append(f"{path}: must be one of {', '.join(choices)} (got {value!r})")
        return value
    try:
        converted = msgspec.convert(value, tp, dec_hook=decode_hook)
    except msgspec.ValidationError as exc:
        errors.append(f"{path}: {_humanise(str(exc))}")
    else:
        if isinstance(converted, float) and not math.isfinite(converted):  # .inf, .nan, a 400-digit duration
            errors.append(f"{path}: must be a finite number (got {value!r})")
    return value


def _yaml_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _check_components(raw: Any, kinds: Mapping[str, type[schema.Base]], path: str,
                      errors: list[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append(f"{path}: must be a mapping, got {_yaml_type(raw)}")
        return {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key_s = str(key)
        kind = schema.component_kind(key_s)
        if kind not in kinds:
            errors.append(f"{path}.{key_s}: unknown {path[:-1]} type {kind!r} "
                          f"(expected one of: {', '.join(sorted(kinds))})")
            continue
        if "/" in key_s and not key_s.split("/", 1)[1]:
            errors.append(f"{path}.{key_s}: a name must follow the '/'")
            continue
        out[key_s] = check_struct(value, kinds[kind], f"{path}.{key_s}", errors)
    return out


_TOP_LEVEL = ("receivers", "processors", "exporters", "extensions", "service")
_MAX_NODES = 100_000  # far beyond any real configuration; bounds YAML alias expansion ("billion laughs")


def _too_large(document: Any) -> bool:
    """More than _MAX_NODES values once aliases are expanded, or an alias that contains itself (&a [*a])."""
    stack, count = [document], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > _MAX_NODES:
            return True
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def load_config_text(text: str, source: str = "<memory>",
                     environ: Mapping[str, str] | None = None) -> schema.Config:
    """Parse, expand and validate; raise ConfigError listing every problem."""
    try:
        return _load_config_text(text, source, environ)
    except RecursionError:
        # PyYAML and the schema walk recurse: a document (or an ${env:...} value) nested hundreds deep.
        raise ConfigError(["<root>: the document is nested too deeply"], source) from None


def _load_config_text(text: str, source: str, environ: Mapping[str, str] | None) -> schema.Config:
    from sidecar.config.validate import cross_check  # validate imports schema only; avoids a cycle

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"<root>: invalid YAML: {exc}"], source) from None
    if _too_large(document):
        raise ConfigError([f"<root>: more than {_MAX_NODES} values once YAML aliases are expanded "
                           "(or an alias that contains itself)"], source)
    if not isinstance(document, dict):
        raise ConfigError([f"<root>: must be a mapping with keys {', '.join(_TOP_LEVEL)}, "
                           f"got {_yaml_type(document)}"], source)
    errors: list[str] = []
    document = expand_env(document, "", errors, os.environ if environ is None else environ)
    for key in document:
        if key not in _TOP_LEVEL:
            errors.append(f"{key}: unknown key (expected one of: {', '.join(_TOP_LEVEL)})")
    receivers = _check_components(document.get("receivers"), schema.RECEIVER_KINDS, "receivers", errors)
    processors = _check_components(document.get("processors"), schema.PROCESSOR_KINDS, "processors", errors)
    exporters = _check_components(document.get("exporters"), schema.EXPORTER_KINDS, "exporters", errors)
    extensions = check_struct(document.get("extensions"), schema.ExtensionsConfig, "extensions", errors)
    if "service" not in document:
        errors.append("service: required key is missing")
    service = check_struct(document.get("service"), schema.ServiceConfig, "service", errors)
    if errors:
        _add_pipeline_errors(document, errors)
        raise ConfigError(errors, source)

    def convert(value: Any, tp: type[schema.Base]) -> Any:
        return msgspec.convert(value, tp, dec_hook=decode_hook)

    config = schema.Config(
        receivers={k: convert(v, schema.OtlpReceiverConfig) for k, v in receivers.items()},
        processors={k: convert(v, schema.PROCESSOR_KINDS[schema.component_kind(k)])
                    for k, v in processors.items()},
        exporters={k: convert(v, schema.ExporterConfig) for k, v in exporters.items()},
        extensions=convert(extensions, schema.ExtensionsConfig),
        service=convert(service, schema.ServiceConfig),
        source=source,
        raw=document,
    )
    errors = cross_check(config)
    if errors:
        raise ConfigError(errors, source)
    return config


def _add_pipeline_errors(document: dict[str, Any], errors: list[str]) -> None:
    """Report undefined pipeline references alongside schema errors, so one run shows everything."""
    from sidecar.config.validate import check_pipelines

    service = document.get("service")
    if not isinstance(service, dict) or "pipelines" not in service:
        return
    try:
        pipelines = msgspec.convert(service["pipelines"], dict[str, schema.PipelineConfig])
    except msgspec.ValidationError:
        return  # already reported by the schema walk

    def names(section: str) -> set[str]:
        value = document.get(section)
        return {str(k) for k in value} if isinstance(value, dict) else set()

    check_pipelines(pipelines, names("receivers"), names("processors"), names("exporters"), errors)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> schema.Config:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"<file>: cannot read {file}: {exc.strerror or exc}"], str(file)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"<file>: {file} is not UTF-8 text: {exc.reason}"], str(file)) from None
    return load_config_text(text, str(file), environ)
