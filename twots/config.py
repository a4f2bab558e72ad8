"""Typed configuration: YAML files in conf/, overridden from the command line.

Each job has a pydantic model (one section of `conf/default.yaml`). Values are layered, later wins:
the model's defaults, `conf/default.yaml[section]`, `conf/<source>.yaml[section]`, `--config FILE` (same layout),
then `--some-key value` flags generated from the model's fields. A field that is itself a section (the training
stages: `train.stage1`, `train.stage2`) is a nested mapping in the files, merged key by key across the layers, and
its keys are flags with a dot (`--stage1.lr 0.003`). The source is `--source` (or the section's
`source` key) or, for a job that reads prepared tables (`data`), the source recorded in `<data>/manifest.json`:
the same data gets the same settings whichever way it is named. Any bad value fails before Spark or torch starts,
with a message naming the key, the value given, where it came from and the accepted form.

List and mapping flags take YAML flow style, as the files do (`--overrides '{ccf: {lrs: [0.003]}}'`, `--models
'[ccf, 2ts]'`), or, for lists, comma-separated values (`--models ccf,2ts`). Every job also takes `--verbose`:
Spark's INFO log (the `spark.log_level` key of the YAML files sets it too) and the third-party warnings and log
lines a job silences otherwise (twots.cli.quiet).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic.fields import FieldInfo

from twots.cli import quiet

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
BIN_DIR = CONF_DIR.parent / "bin"  # the venv's commands for any shell: bin/spark-submit, bin/python, bin/mlflow
JOB_FLAGS = ("config", "verbose")  # flags of every job that are not keys of its section

M = TypeVar("M", bound="Section")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


class Section(BaseModel):
    """Base of every job's config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    _config_file: str | None = PrivateAttr(None)   # the job's --config, set by `load`

    def sibling(self, model: type[M], section: str) -> M:
        """The keys of `model` in another section of the config files this one came from (conf/default.yaml, the
        data source's file, the job's --config), without command-line flags: training's evaluation takes the
        replay settings of the `evaluate:` section so (the section's other keys are its own job's)."""
        layers = layered(model, section, {"config": self._config_file}, data=getattr(self, "data", None))
        return build(model, section, {k: v for k, v in layers.values.items() if k in model.model_fields},
                     layers.origin)


LOG_LEVEL_ENV = "TWOTS_SPARK_LOG_LEVEL"   # read by twots.spark.get_spark and by the log4j2 file of `make setup`
LOG_LEVELS = ("ERROR", "WARN", "INFO", "DEBUG")


class SparkSettings(Section):
    """The `spark` section of the config files: what every job's Spark session gets."""

    log_level: Literal[LOG_LEVELS] = Field("WARN", description="Spark's log level (a job's --verbose: INFO)")


def set_log_level(level: str) -> None:
    """The level of the Spark sessions (and JVMs) this process starts from now on."""
    os.environ[LOG_LEVEL_ENV] = level


def subsections(model: type[Section]) -> dict[str, type[Section]]:
    """The fields of `model` that are sections themselves (nested mappings, flags `--field.key`)."""
    return {name: field.annotation for name, field in model.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, Section)}


def field_of(model: type[Section], key: str) -> FieldInfo | None:
    """The field a dotted key names (`stage1.lr`), or None."""
    head, _, rest = key.partition(".")
    if rest:
        inner = subsections(model).get(head)
        return inner.model_fields.get(rest) if inner else None
    return model.model_fields.get(head)


def flat(cfg: Section) -> dict[str, Any]:
    """The config's values (JSON types) with its nested sections' keys dotted (`stage1.lr`): MLflow params."""
    out = {}
    for key, value in cfg.model_dump(mode="json").items():
        if key in subsections(type(cfg)):
            out.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            out[key] = value
    return out


class Layers:
    """The values of one section, where each came from (by key; `stage1.lr` for a nested one), and the files applied,
    in order. A nested section's mapping is merged key by key: a later layer sets only the keys it names."""

    def __init__(self, nested: tuple[str, ...] = ()) -> None:
        self.nested = nested
        self.values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        self.applied: list[str] = []

    def update(self, values: dict[str, Any], origin: str) -> None:
        for key, value in values.items():
            if key in self.nested and isinstance(value, dict) and isinstance(self.values.get(key), dict):
                self.values[key] = {**self.values[key], **value}
            else:
                self.values[key] = value
            keys = [f"{key}.{inner}" for inner in value] if key in self.nested and isinstance(value, dict) else [key]
            self.origin.update(dict.fromkeys(keys, origin))

    def apply(self, path: Path, section: str, why: str = "") -> None:
        values = _read_yaml(path, section)
        if values:
            self.applied.append(_shown(path) + why)
        self.update(values, _shown(path))


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(CONF_DIR.parent))
    except ValueError:
        return str(path)


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


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a union (`int | None` -> [int, NoneType]); [annotation] otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def _kind(annotation: Any) -> type | None:
    """list or dict when the field takes one (alone or in a union with None), else None."""
    for member in _members(annotation):
        origin = typing.get_origin(member) or member
        if origin in (list, tuple, dict):
            return dict if origin is dict else list
    return None


PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def describe(annotation: Any) -> str:
    """A type as a person reads it: `list[str]` -> 'a list of strings ([a, b] or a,b)'."""
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null",
             dict: "a mapping {key: value}", list: "a list ([a, b] or a,b)"}
    if annotation in names:
        return names[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        metadata = [m for extra in args[1:] for m in (extra.metadata if isinstance(extra, FieldInfo) else [extra])]
        return " ".join([describe(args[0]), *_bounds(metadata)])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (list, tuple) and args:
        inner = args[0]
        if typing.get_origin(inner) is typing.Literal:
            of = "values among " + ", ".join(str(a) for a in typing.get_args(inner))
        else:
            of = PLURALS.get(inner) or describe(inner)
        return f"a list of {of} ([a, b] or a,b)"
    if origin is dict and args:
        return f"a mapping {{key: {describe(args[1])}}} in YAML flow style"
    return names.get(origin) or getattr(annotation, "__name__", str(annotation))


def _bounds(metadata: list) -> list[str]:
    signs = {annotated_types.Ge: (">=", "ge"), annotated_types.Gt: (">", "gt"), annotated_types.Le: ("<=", "le"),
             annotated_types.Lt: ("<", "lt")}
    parts = []
    for meta in metadata:
        for kind, (sign, attr) in signs.items():
            if isinstance(meta, kind):
                parts.append(f"{sign} {getattr(meta, attr)}")
        if isinstance(meta, annotated_types.MinLen) and meta.min_length:
            parts.append(f"with at least {meta.min_length} element(s)")
    return parts


def accepted_form(field: FieldInfo) -> str:
    """The field's type and bounds, e.g. 'an integer >= 1'."""
    return " ".join([describe(field.annotation), *_bounds(field.metadata)])


def _parse_cli_value(flag: str, raw: str, field: FieldInfo) -> Any:
    """CLI values are strings: lists and mappings in YAML flow style (JSON is YAML), lists also as a,b,c."""
    kind = _kind(field.annotation)
    text = raw.strip()
    if kind is None:
        return None if text.lower() in ("none", "null") else raw
    if text.startswith(("[", "{")):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            problem = str(err).splitlines()[0]
            raise ConfigError(f"{flag} {raw!r}: not YAML flow style ({problem}); accepted: "
                              f"{accepted_form(field)}, e.g. {_example(field)}") from None
        if not isinstance(value, kind):
            raise ConfigError(f"{flag} {raw!r}: a {type(value).__name__}, expected {accepted_form(field)}, "
                              f"e.g. {_example(field)}")
        glued = [k for k, v in value.items() if v is None and ":" in str(k)] if kind is dict else []
        if glued:  # YAML reads `{a:1}` as the key 'a:1' with no value
            raise ConfigError(f"{flag} {raw!r}: {glued[0]!r} has no value; YAML needs a space after the colon, "
                              f"e.g. {_example(field)}")
        return value
    if kind is dict:
        raise ConfigError(f"{flag} {raw!r}: expected {accepted_form(field)}, e.g. {_example(field)}")
    return [part.strip() for part in text.split(",") if part.strip()]


def _example(field: FieldInfo) -> str:
    for member in _members(field.annotation):
        args = typing.get_args(member)
        if typing.get_origin(member) is dict or member is dict:
            inner = typing.get_origin(args[1]) if args else None
            return "'{ccf: [0.003, 0.01]}'" if inner is list else "'{key: value}'"
        if typing.get_origin(member) in (list, tuple) or member in (list, tuple):
            return "'[a, b]' or a,b"
    return "a value"


def _is_union(field: FieldInfo | None) -> bool:
    return field is not None and len([m for m in _members(field.annotation) if m is not type(None)]) > 1


def _format_error(model: type[Section], section: str, err: ValidationError, origin: dict[str, str]) -> str:
    lines, unions = [], set()
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        # A key of a nested section (train.stage1.lr) is named, looked up and explained within that section.
        owner, owner_name, depth = model, section, 0
        if len(loc) > 1 and loc[0] in subsections(model):
            owner, owner_name, depth = subsections(model)[loc[0]], f"{section}.{loc[0]}", 1
        top = loc[depth] if len(loc) > depth else None
        if top is not None and _is_union(owner.model_fields.get(top)):  # one line, not one per alternative
            if (owner_name, top) in unions:
                continue
            unions.add((owner_name, top))
            loc, e = loc[:depth + 1], {**e, "msg": "not any of the accepted forms"}
        key = ".".join([section, *loc])
        field = owner.model_fields.get(top) if top else None
        source = origin.get(".".join(loc[:depth + 1]), origin.get(loc[0], "default")) if top else None
        if e["type"] == "extra_forbidden":
            # A nested key written flat (stage1_epochs) is matched as stage1.epochs.
            known = {**{k: k for k in owner.model_fields},
                     **{f"{name}_{inner}": f"{name}.{inner}" for name, sub in subsections(owner).items()
                        for inner in sub.model_fields}}
            close = difflib.get_close_matches(top, known, n=1)
            hint = (f"; did you mean '{known[close[0]]}'?" if close
                    else f"; known keys: {', '.join(owner.model_fields)}")
            lines.append(f"  {key} = {e.get('input')!r} (from {source}): not a key of '{owner_name}'{hint}")
            continue
        message = e["msg"].removeprefix("Value error, ")
        if not loc:  # a check across keys
            lines.append(f"  {section}: {message}")
            continue
        given = f" = {e['input']!r}" if "input" in e else ""
        lines.append(f"  {key}{given} (from {source}): {message}")
        if field is not None:
            lines.append(f"      accepted: {accepted_form(field)}")
    return f"invalid configuration for '{section}':\n" + "\n".join(lines)


def build(model: type[M], section: str, values: dict[str, Any], origin: dict[str, str] | None = None) -> M:
    try:
        return model(**values)
    except ValidationError as err:
        raise ConfigError(_format_error(model, section, err, origin or {})) from None


def parser_for(model: type[Section], description: str) -> argparse.ArgumentParser:
    """An argparse parser with one `--kebab-case` flag per config field (all optional); a nested section's keys are
    `--section.key` flags."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="extra YAML file, same layout as conf/default.yaml")
    parser.add_argument("--verbose", action="store_true", default=None,
                        help="Spark's INFO log (default: WARN) and the third-party warnings silenced by default")
    nested = subsections(model)
    for name, field in model.model_fields.items():
        if name in nested:
            group = parser.add_argument_group(f"{name}", nested[name].__doc__)
            for inner, inner_field in nested[name].model_fields.items():
                _add_flag(group, f"{name}.{inner}", inner_field)
        else:
            _add_flag(parser, name, field)
    return parser


def _add_flag(parser, key: str, field: FieldInfo) -> None:
    help_text = f"{field.description + '; ' if field.description else ''}{accepted_form(field)}"
    parser.add_argument(_flag(key), dest=key, default=None, help=help_text.replace("%", "%%"))


def load(model: type[M], section: str, argv: list[str] | None = None, *, description: str = "",
         conf_dir: Path = CONF_DIR) -> M:
    """Parse argv and the YAML layers into a validated config, or exit(2) naming the bad key. Says which config
    files it applied, sets the Spark log level (`--verbose`, `spark.log_level`) for the session to come and, without
    `--verbose`, silences the harmless third-party output (twots.cli.quiet)."""
    parser = parser_for(model, description or model.__doc__ or section)
    cli = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    try:
        layers = layered(model, section, cli, conf_dir=conf_dir)
        spark = build(SparkSettings, "spark", _spark_layers(cli, conf_dir).values)
        cfg = build(model, section, layers.values, layers.origin)
    except ConfigError as err:
        parser.exit(2, f"config error: {err}\n")
    set_log_level("INFO" if cli.get("verbose") else spark.log_level)
    if not cli.get("verbose"):
        quiet()
    cfg._config_file = cli.get("config")
    keys = [f"{name}.{inner}" for name, inner_model in subsections(model).items() for inner in inner_model.model_fields]
    flags = " ".join(_flag(k) for k in [*model.model_fields, *keys] if layers.origin.get(k) == "command line")
    print(f"[config] {section}: " + (", ".join(layers.applied) or "defaults") + (f" + flags {flags}" if flags else ""),
          flush=True)
    return cfg


def _spark_layers(cli: dict[str, Any], conf_dir: Path) -> Layers:
    layers = Layers()
    layers.apply(conf_dir / "default.yaml", "spark")
    if cli.get("config"):
        layers.apply(Path(cli["config"]), "spark")
    return layers


def resolve(model: type[M], section: str, cli: dict[str, Any], *, conf_dir: Path = CONF_DIR,
            data: str | None = None) -> M:
    """Layer defaults < default.yaml < <source>.yaml < --config < CLI values, then validate. `data`: a prepared
    folder whose recorded source applies, for a section without a `data` key of its own."""
    layers = layered(model, section, cli, conf_dir=conf_dir, data=data)
    return build(model, section, layers.values, layers.origin)


def layered(model: type[Section], section: str, cli: dict[str, Any], *, conf_dir: Path = CONF_DIR,
            data: str | None = None) -> Layers:
    """The section's values from every layer, not yet validated; CLI strings parsed by their field's type, dotted
    keys (`stage1.lr`) into their nested section."""
    layers = Layers(tuple(subsections(model)))
    layers.apply(conf_dir / "default.yaml", section)
    overrides = {k: v for k, v in cli.items() if k not in JOB_FLAGS and v is not None}
    source, recorded_in = _source(overrides, layers.values, data)
    if source is not None:
        layers.apply(conf_dir / f"{source}.yaml", section, f" (source of {recorded_in})" if recorded_in else "")
    extra = cli.get("config")
    if extra:
        path = Path(extra)
        if not path.exists():
            raise ConfigError(f"--config {extra}: no such file")
        layers.apply(path, section)
    parsed: dict[str, Any] = {}
    for key, raw in overrides.items():
        field = field_of(model, key)
        value = _parse_cli_value(_flag(key), raw, field) if isinstance(raw, str) and field is not None else raw
        head, _, inner = key.partition(".")
        if inner and head in layers.nested:
            parsed.setdefault(head, {})[inner] = value
        else:
            parsed[key] = value
    layers.update(parsed, "command line")
    return layers


def _source(overrides: dict[str, Any], values: dict[str, Any], data: str | None = None
            ) -> tuple[str | None, Path | None]:
    """The data source whose conf/<source>.yaml applies: given, or recorded in <data>/manifest.json (then also
    that manifest)."""
    given = overrides.get("source", values.get("source"))
    data = overrides.get("data", values.get("data", data))
    manifest = Path(data) / "manifest.json" if isinstance(data, str) else None
    if manifest is None or not manifest.is_file():
        return given, None
    try:
        recorded = json.loads(manifest.read_text())["config"]["source"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{manifest}: no source recorded ({err!r}); is it prepare's output?") from None
    if given is not None and given != recorded:
        raise ConfigError(f"source = {given!r}, but {manifest} was prepared from {recorded!r}")
    return recorded, manifest
