"""Typed configuration: YAML files in conf/, overridden from the command line.

Each job has a pydantic model (one section of `conf/default.yaml`). Values are layered, later wins:
the model's defaults, `conf/default.yaml[section]`, `conf/<source>.yaml[section]` (when the job
has a `source`), `--config FILE` (same layout), then `--some-key value` flags generated from the
model's fields. Any bad value fails before Spark or torch starts, with a message naming the key.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

M = TypeVar("M", bound="Section")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


class Section(BaseModel):
    """Base of every job's config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _read_yaml(path: Path, section: str) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    values = doc.get(section) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: section '{section}' must be a mapping")
    return values


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _is_container(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_container(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin in (list, dict, tuple) or annotation in (list, dict, tuple)


def _parse_cli_value(raw: str, annotation: Any) -> Any:
    """CLI values are strings; lists/dicts may be given as JSON or comma-separated lists."""
    if _is_container(annotation):
        raw = raw.strip()
        if raw.startswith(("[", "{")):
            return json.loads(raw)
        return [part for part in raw.split(",") if part]
    if raw.lower() in ("none", "null"):
        return None
    return raw


def _format_error(section: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        got = e.get("input")
        lines.append(f"  {section}.{key}: {e['msg']} (got {got!r})")
    return f"invalid configuration for '{section}':\n" + "\n".join(lines)


def build(model: type[M], section: str, values: dict[str, Any]) -> M:
    try:
        return model(**values)
    except ValidationError as err:
        raise ConfigError(_format_error(section, err)) from None


def parser_for(model: type[Section], description: str) -> argparse.ArgumentParser:
    """An argparse parser with one `--kebab-case` flag per config field (all optional)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="extra YAML file, same layout as conf/default.yaml")
    for name, field in model.model_fields.items():
        parser.add_argument(_flag(name), dest=name, default=None, help=field.description)
    return parser


def load(model: type[M], section: str, argv: list[str] | None = None, *, description: str = "",
         conf_dir: Path = CONF_DIR) -> M:
    """Parse argv and the YAML layers into a validated config, or exit(2) naming the bad key."""
    parser = parser_for(model, description or model.__doc__ or section)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return resolve(model, section, vars(args), conf_dir=conf_dir)
    except ConfigError as err:
        parser.exit(2, f"config error: {err}\n")


def resolve(model: type[M], section: str, cli: dict[str, Any], *, conf_dir: Path = CONF_DIR) -> M:
    """Layer defaults < default.yaml < <source>.yaml < --config < CLI values, then validate."""
    values = _read_yaml(conf_dir / "default.yaml", section)
    overrides = {k: v for k, v in cli.items() if k != "config" and v is not None}
    source = overrides.get("source", values.get("source"))
    if source is not None:
        values.update(_read_yaml(conf_dir / f"{source}.yaml", section))
    extra = cli.get("config")
    if extra:
        path = Path(extra)
        if not path.exists():
            raise ConfigError(f"--config {extra}: no such file")
        values.update(_read_yaml(path, section))
    for name, raw in overrides.items():
        annotation = model.model_fields[name].annotation
        values[name] = _parse_cli_value(raw, annotation) if isinstance(raw, str) else raw
    return build(model, section, values)
