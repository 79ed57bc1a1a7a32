"""Configuration as typed parts, checked up front.

Each part of the program owns its settings as a frozen dataclass (a `Settings`): one attribute
per key, its type in the annotation and its rule in `setting(...)`:

    @dataclass(frozen=True, kw_only=True)
    class OutboxSettings(Settings):
        path: FilePath = setting("/var/lib/chot/outbox.db", help="the outbox database")
        max_rows: int = setting(1_000_000, min=1, help="cap on events kept")
        synchronous: Literal["FULL", "NORMAL"] = setting("FULL", help="SQLite synchronous mode")

The type gives the kind (str, int, float, bool, `FilePath`, `list[...]`, `X | None` for an
optional key) and a `Literal[...]` the values allowed. A part may check what spans its own keys
(`problems(name)`) and what it needs of the machine (`world_problems(name)`: files that must
exist, folders that must be writable). A `Config` (also a frozen dataclass) composes the parts,
one attribute per TOML section, and may check what spans parts (`Config.problems()`).

`load(path, ConfigClass)` reads a TOML file, fills in defaults, checks every value and every
part, and raises one `ConfigError` listing every problem (key, the value found, what is allowed),
so a technician fixes them all at once. `world=True` also checks the machine (the daemons do at
start-up; `check-config --offline` leaves it out for a config meant for another machine).
The result is the typed config: `cfg.outbox.max_rows`, `cfg.as_dict()` for the plain data.

A plain dict of sections of `Field`s is still accepted as a schema (small tools' own files).
"""

import dataclasses
import os
import re
import stat
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal, NewType

from chot.errors import ConfigError

REQUIRED = object()

FilePath = NewType("FilePath", str)
"""A key holding a file or folder path (a string in TOML and in the config)."""


@dataclass(frozen=True)
class Field:
    """One configuration key's rule: its kind, default and the values allowed."""

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
    types_ = _TYPES[field.kind]
    if isinstance(value, bool) and field.kind in ("int", "float"):
        return field.allowed()
    if not isinstance(value, types_):
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


# --- typed settings -------------------------------------------------------------------------------

_META = "chot"


def setting(default=REQUIRED, *, min=None, max=None, pattern=None, help=""):  # noqa: A002 (min/max read well)
    """A key of a `Settings` class: its default (leave out: required) and its rule."""
    meta = {_META: {"default": default, "min": min, "max": max, "pattern": pattern, "help": help}}
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    if isinstance(default, list | tuple):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _kind(tp):
    """(kind, choices, item, optional) of a settings annotation."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        (tp,) = args
    if typing.get_origin(tp) is list:
        (inner,) = typing.get_args(tp) or (str,)
        ikind, ichoices, _, _ = _kind(inner)
        return "list", ichoices, ikind, optional
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        return {str: "str", int: "int", float: "float"}[type(choices[0])], choices, None, optional
    if tp is FilePath:
        return "path", None, None, optional
    kind = {str: "str", int: "int", float: "float", bool: "bool", dict: "table"}.get(tp)
    if kind is None:
        raise TypeError(f"settings key of unsupported type {tp!r}")
    return kind, None, None, optional


def rules(settings_cls):
    """The `Field` rule of every key of a `Settings` class, in order: {key: Field}."""
    cached = settings_cls.__dict__.get("_chot_rules")
    if cached is not None:
        return cached
    hints = typing.get_type_hints(settings_cls)
    out = {}
    for f in dataclasses.fields(settings_cls):
        meta = f.metadata.get(_META)
        if meta is None:
            continue
        kind, choices, item, optional = _kind(hints[f.name])
        out[f.name] = Field(
            kind, meta["default"], choices=choices, min=meta["min"], max=meta["max"], pattern=meta["pattern"],
            item=item, optional=optional or meta["default"] is None, help=meta["help"],
        )
    settings_cls._chot_rules = out
    return out


class Settings:
    """Base of a part's settings (a frozen, keyword-only dataclass; see the module doc)."""

    def problems(self, name):
        """Problems that span this part's keys (pure: no files, no network). `name`: its section."""
        return []

    def world_problems(self, name):
        """Problems with what the keys point at on this machine: files, folders, permissions."""
        return []


class Config:
    """Base of a composed config (a frozen dataclass, one `Settings` attribute per section)."""

    def as_dict(self):
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def section(self, name):
        return getattr(self, name)

    def problems(self):
        """Problems that span parts (pure)."""
        return []

    def world_problems(self):
        """World problems that span parts (each part checks its own: see `world_problems(cfg)`)."""
        return []


def world_problems(cfg):
    """Every world problem of a validated config: each part's (files, folders, permissions), then the config's."""
    out = []
    for f in dataclasses.fields(cfg):
        out += getattr(cfg, f.name).world_problems(f.name)
    return out + cfg.world_problems()


def sections(schema):
    """{section: (settings class or None, {key: Field})} of a Config class or a dict schema."""
    if isinstance(schema, dict):
        return {name: (None, fields) for name, fields in schema.items()}
    hints = typing.get_type_hints(schema)
    return {f.name: (hints[f.name], rules(hints[f.name])) for f in dataclasses.fields(schema)}


def _section_values(name, fields, raw, problems):
    """The checked values of one section (None when a key is wrong); problems appended."""
    values = {}
    ok = True
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
                ok = False
                continue
            if field.kind == "float" and value is not None:
                value = float(value)
            values[key] = value
        elif field.default is REQUIRED:
            problems.append(f"{name}.{key}: missing; allowed: {field.allowed()}")
            ok = False
        else:
            default = field.default
            values[key] = list(default) if isinstance(default, list | tuple) else \
                dict(default) if isinstance(default, dict) else default
    return values if ok else None


def validate(data, schema, source="<config>", world=False):
    """Check `data` (a dict, as read from TOML) against `schema`; return the typed config.

    `schema` is a `Config` class (or a dict of sections of `Field`s: a namespace per section).
    Every part's own checks run on the parts whose keys are right, the checks that span parts
    when every part is right, and with `world` the checks of files and folders too.
    """
    problems = []
    if not isinstance(data, dict):
        raise ConfigError(source, ["the file must hold TOML tables"])
    secs = sections(schema)
    for name in data:
        if name not in secs:
            problems.append(f"[{name}]: unknown section; allowed sections: {', '.join(sorted(secs))}")
    parts = {}
    for name, (cls, fields) in secs.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            problems.append(f"[{name}]: found {raw!r}; allowed: a table")
            raw = {}
        values = _section_values(name, fields, raw, problems)
        if values is None:
            continue
        if cls is None:
            parts[name] = SimpleNamespace(**values)
            continue
        part = cls(**values)
        problems += part.problems(name)
        if world:
            problems += part.world_problems(name)
        parts[name] = part
    if isinstance(schema, dict):
        if problems:
            raise ConfigError(source, problems)
        return _Namespace(**parts)
    cfg = None
    if len(parts) == len(secs):
        cfg = schema(**parts)
        problems += cfg.problems()
        if world:
            problems += cfg.world_problems()
    if problems:
        raise ConfigError(source, problems)
    return cfg


class _Namespace(SimpleNamespace):
    """A config validated against a dict schema: one namespace per section."""

    def as_dict(self):
        return {k: dict(vars(v)) if isinstance(v, SimpleNamespace) else v for k, v in vars(self).items()}

    def section(self, name):
        return getattr(self, name)


def read_toml(path):
    """The TOML data of a config file; `ConfigError` saying what is wrong with the file."""
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
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None


def load(path, schema, overrides=None, world=False):
    """Read and validate a TOML file. `overrides` (a dict of sections) are merged on top."""
    data = read_toml(path)
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    return validate(data, schema, source=str(path), world=world)


def describe(schema):
    """Return a TOML document listing every key with its default and what it allows."""
    out = []
    for name, (_, fields) in sections(schema).items():
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
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_value(str(k))} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return repr(v)


# --- checks of the machine, shared by the parts ------------------------------------------------------


def file_problem(key, path, secret=False, folder=False):
    """A problem text when `path` (the value of `key`) is not readable, else None.

    `folder`: False a file, True a folder, None either. With `secret` a file that others (not its
    owner or group) may read is a problem too: a private key or a password is 0600 (or 0640 for
    the service's group).
    """
    p = Path(path)
    what = {False: "file", True: "folder", None: "file or folder"}[folder]
    try:
        st = p.stat()
    except FileNotFoundError:
        return f"{key}: found {str(path)!r}; allowed: an existing {what} (it does not exist)"
    except OSError as exc:
        return f"{key}: found {str(path)!r}; allowed: an existing {what} ({exc.strerror})"
    is_dir = stat.S_ISDIR(st.st_mode)
    if folder is True and not is_dir:
        return f"{key}: found {str(path)!r}; allowed: a folder (it is a file)"
    if folder is False and is_dir:
        return f"{key}: found {str(path)!r}; allowed: a file (it is a folder)"
    if not os.access(p, os.R_OK | (os.X_OK if is_dir else 0)):
        return f"{key}: found {str(path)!r}; allowed: a {what} this user can read (permission denied)"
    if secret and st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        return (f"{key}: found {str(path)!r} with mode {stat.S_IMODE(st.st_mode):04o}; allowed: a secret file "
                f"others cannot read (chmod 600 {path})")
    return None


def files_problems(checks):
    """The problems of (key, path, secret, folder) checks whose path is set."""
    out = []
    for key, path, secret, folder in checks:
        if path:
            problem = file_problem(key, path, secret=secret, folder=folder)
            if problem:
                out.append(problem)
    return out


def writable_folder_problem(key, path):
    """A problem text when the folder of file `path` (the value of `key`) is missing or not writable."""
    folder = Path(path).parent
    if not folder.is_dir():
        return (f"{key}: found {str(path)!r}; allowed: a path in an existing folder ({folder} does not exist: "
                f"create it, owned by the service's user)")
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{key}: found {str(path)!r}; allowed: a path in a folder this user can write ({folder} is not)"
    if Path(path).exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"{key}: found {str(path)!r}; allowed: a file this user can read and write (it cannot)"
    return None


def tls_problems(name, m):
    """Incomplete TLS or login settings of an `[mqtt]` section (terminal's or collector's)."""
    out = []
    if m.tls and not m.ca:
        out.append(f"{name}.ca: missing; allowed: the broker's CA certificate (PEM), required when {name}.tls = true "
                   "(the fleet's CA, not the system's store)")
    if not m.tls and (m.ca or m.cert or m.key):
        out.append(f"{name}.tls: found false; allowed: true when {name}.ca, {name}.cert or {name}.key is set "
                   "(they are used only over TLS)")
    if m.cert and not m.key:
        out.append(f"{name}.key: missing; allowed: the client certificate's private key (PEM, 0600), required "
                   f"when {name}.cert is set")
    if m.key and not m.cert:
        out.append(f"{name}.cert: missing; allowed: the client certificate (PEM), required when {name}.key is set")
    return out


def tls_world_problems(name, m):
    """The TLS and login files of an `[mqtt]` section: present, readable, secrets not readable by others."""
    return files_problems([
        (f"{name}.ca", m.ca, False, False),
        (f"{name}.cert", m.cert, False, False),
        (f"{name}.key", m.key, True, False),
        (f"{name}.password_file", m.password_file, True, False),
    ])
