"""Configuration as plain data, checked up front.

A schema is a dict of sections, each a dict of `Field`s. `load(path, schema)` reads a TOML
file, fills in defaults and checks every value, and raises one `ConfigError` listing every
problem (key, the value found, what is allowed), so a technician fixes them all at once.
The result is a `Config`: attribute access per section (`cfg.outbox.max_rows`) and
`cfg.as_dict()` for the plain data.
"""

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from chot.errors import ConfigError

REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One configuration key: its type, default and the values allowed."""

    kind: str  # "str", "int", "float", "bool", "path", "list", "table"
    default: object = REQUIRED
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    item: str | None = None  # for lists: kind of each item
    optional: bool = False  # None allowed (the key may be left out)
    help: str = ""

    def allowed(self):
        if self.choices and self.kind == "list":
            return "a list, each item one of " + ", ".join(repr(c) for c in self.choices)
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        desc = {
            "str": "a string",
            "path": "a file path (string)",
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "list": f"a list of {self.item or 'values'}",
            "table": "a table",
        }[self.kind]
        if self.min is not None and self.max is not None:
            desc += f" from {self.min} to {self.max}"
        elif self.min is not None:
            desc += f" >= {self.min}"
        elif self.max is not None:
            desc += f" <= {self.max}"
        if self.pattern:
            desc += f" matching {self.pattern}"
        return desc


_TYPES = {
    "str": (str,),
    "path": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "table": (dict,),
}


def _check_value(field, value):
    """Return an error text, or None when `value` fits `field`."""
    if value is None and field.optional:
        return None
    types = _TYPES[field.kind]
    if isinstance(value, bool) and field.kind in ("int", "float"):
        return field.allowed()
    if not isinstance(value, types):
        return field.allowed()
    if field.choices and field.kind != "list" and value not in field.choices:
        return field.allowed()
    if field.kind in ("int", "float"):
        if field.min is not None and value < field.min or field.max is not None and value > field.max:
            return field.allowed()
    if field.kind in ("str", "path") and field.pattern and not re.fullmatch(field.pattern, value):
        return field.allowed()
    if field.kind == "list" and field.item:
        item_field = Field(field.item, choices=field.choices)
        for v in value:
            if _check_value(item_field, v):
                return field.allowed()
    return None


class Config(SimpleNamespace):
    """A validated configuration: one attribute per section, each a namespace of keys."""

    def as_dict(self):
        return {k: dict(vars(v)) if isinstance(v, SimpleNamespace) else v for k, v in vars(self).items()}

    def section(self, name):
        return getattr(self, name)


def validate(data, schema, source="<config>"):
    """Check `data` (a dict, as read from TOML) against `schema`; return a `Config`."""
    problems = []
    sections = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["the file must hold TOML tables"])
    for name in data:
        if name not in schema:
            problems.append(
                f"[{name}]: unknown section; allowed sections: {', '.join(sorted(schema))}"
            )
    for name, fields in schema.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            problems.append(f"[{name}]: found {raw!r}; allowed: a table")
            raw = {}
        values = {}
        for key in raw:
            if key not in fields:
                problems.append(
                    f"{name}.{key}: unknown key (found {raw[key]!r}); allowed keys: {', '.join(sorted(fields))}"
                )
        for key, field in fields.items():
            if key in raw:
                value = raw[key]
                err = _check_value(field, value)
                if err:
                    problems.append(f"{name}.{key}: found {value!r}; allowed: {err}")
                    continue
                if field.kind == "float" and value is not None:
                    value = float(value)
                values[key] = value
            elif field.default is REQUIRED:
                problems.append(f"{name}.{key}: missing; allowed: {field.allowed()}")
            else:
                default = field.default
                values[key] = list(default) if isinstance(default, list | tuple) else default
        sections[name] = SimpleNamespace(**values)
    if problems:
        raise ConfigError(source, problems)
    return Config(**sections)


def load(path, schema, overrides=None):
    """Read and validate a TOML file. `overrides` (a dict of sections) are merged on top."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, ["file not found: give the path of a TOML config file"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(path, ["the file is not UTF-8 text"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    return validate(data, schema, source=str(path))


def describe(schema):
    """Return a TOML document listing every key with its default and what it allows."""
    out = []
    for name, fields in schema.items():
        out.append(f"[{name}]")
        for key, field in fields.items():
            if field.help:
                out.append(f"# {field.help}")
            out.append(f"# allowed: {field.allowed()}")
            if field.default is REQUIRED:
                out.append(f"# {key} = ...   (required)")
            elif field.default is None:
                out.append(f"# {key} =       (optional, unset)")
            else:
                out.append(f"{key} = {_toml_value(field.default)}")
        out.append("")
    return "\n".join(out)


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)
