"""One schema per service drives the TOML file, the environment and the command line.

A service declares a dataclass whose fields carry their help text and validation. Values are layered
(defaults < ``/etc/nemotron/nemotron.toml`` section < ``NEMOTRON_<SERVICE>_<FIELD>`` < flags), then
checked once; any problem raises :class:`ConfigError` naming the setting, which the entry point turns
into exit status 78 (EX_CONFIG).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/nemotron/nemotron.toml")
CONFIG_PATH_ENV = "NEMOTRON_CONFIG"


class ConfigError(Exception):
    """A setting is missing or wrong; the message names it."""


def setting(default: Any, help: str, *, choices: tuple | None = None,
            check: Callable[[Any], str | None] | None = None) -> Any:
    """A dataclass field with help text, optional allowed values and a check returning an error or None."""
    meta = {"help": help, "choices": choices, "check": check}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def port_number(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be a TCP port between 1 and 65535"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _field_type(schema: type, field: dataclasses.Field) -> type:
    hint = typing.get_type_hints(schema)[field.name]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # "int | None": the non-None member
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return origin or hint


def _coerce(kind: type, raw: Any, name: str) -> Any:
    """Turn a TOML value or an environment string into the field's type."""
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is list:
            if isinstance(raw, list):
                return raw
            return [int(p) for p in str(raw).split(",") if p.strip()]
        if kind in (int, float) and isinstance(raw, bool):
            raise ValueError(raw)
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {raw!r} is not a valid {kind.__name__}") from None


def coerce_setting(schema: type, field: dataclasses.Field, raw: Any, label: str) -> Any:
    """A raw value (TOML, environment, flag, installer option) as ``field``'s type; ConfigError naming
    ``label`` otherwise."""
    return _coerce(_field_type(schema, field), raw, label)


def env_name(service: str, field: str) -> str:
    return f"NEMOTRON_{service.upper()}_{field.upper()}"


def read_toml_section(path: Path | None, service: str) -> tuple[Path | None, dict]:
    """The ``[service]`` table of the config file; a missing default file is fine, a named one is not."""
    explicit = path is not None or CONFIG_PATH_ENV in os.environ
    path = Path(path or os.environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH)
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file {path} does not exist")
        return None, {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    section = data.get(service, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [{service}] must be a table")
    return path, section


def load(schema: type, service: str, *, path: Path | None = None,
         flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Any:
    """Build and validate a ``schema`` instance from file, environment and flags (highest wins)."""
    environ = os.environ if environ is None else environ
    source, section = read_toml_section(path, service)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown setting [{service}] {unknown[0]} "
                          f"(known: {', '.join(sorted(fields))})")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        kind = _field_type(schema, field)
        label = f"[{service}] {name}"
        if name in section:
            values[name] = _coerce(kind, section[name], label)
        env = env_name(service, name)
        if env in environ:
            values[name] = _coerce(kind, environ[env], env)
        if flags and flags.get(name) is not None:
            values[name] = _coerce(kind, flags[name], f"--{name.replace('_', '-')}")
    config = schema(**values)
    validate(config, service)
    return config


def validate(config: Any, service: str) -> None:
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        choices = field.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"[{service}] {field.name} = {value!r}: must be one of "
                              f"{', '.join(map(str, choices))}")
        check = field.metadata.get("check")
        problem = check(value) if check and value is not None else None
        if problem:
            raise ConfigError(f"[{service}] {field.name} = {value!r}: {problem}")
    post = getattr(config, "check", None)
    if post:
        problem = post()
        if problem:
            raise ConfigError(f"[{service}] {problem}")


def click_options(schema: type) -> Callable:
    """Decorator adding one ``--flag`` per schema field; values default to None (= not given)."""
    import click

    def decorate(func: Callable) -> Callable:
        for field in reversed(dataclasses.fields(schema)):
            kind = _field_type(schema, field)
            flag = "--" + field.name.replace("_", "-")
            help_text = field.metadata.get("help", "")
            if kind is bool:
                func = click.option(f"{flag}/--no-{flag[2:]}", field.name, default=None, help=help_text)(func)
            else:
                click_type = {int: int, float: float}.get(kind, str)
                func = click.option(flag, field.name, type=click_type, default=None,
                                    help=f"{help_text} [default: {field.default!r}]"
                                    if field.default is not dataclasses.MISSING else help_text)(func)
        return func

    return decorate
