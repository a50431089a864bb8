"""Command-line flags generated from the settings declared in :mod:`curation.config`.

Each field becomes ``--field-name`` (a repeatable ``--field-name`` without the plural ``s``
for list settings, ``--x/--no-x`` for booleans) with the field's help and default, so flags,
help, YAML keys and validation never drift apart. Flags default to ``None`` (not given), so
a config file's values hold unless a flag overrides them.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal

import click
from pydantic.fields import FieldInfo

from curation.config import Settings, SettingsT, validate


def _describe_default(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def base_type(field: FieldInfo) -> Any:
    """A setting's type without ``| None``."""
    annotation = field.annotation
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    is_optional = origin in (typing.Union, types.UnionType) and len(args) == 1
    return args[0] if is_optional else annotation


def flag_name(name: str, field: FieldInfo) -> str:
    """The flag of a setting: ``--field-name``, without the plural ``s`` for list settings."""
    flag = "--" + name.replace("_", "-")
    return flag.removesuffix("s") if typing.get_origin(base_type(field)) is tuple else flag


def _option(
    name: str, field: FieldInfo, required: Iterable[str], config_file: bool
) -> Callable[[Any], Any]:
    base = base_type(field)
    flag = flag_name(name, field)
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    decls = [flag] + ([extra["short"]] if extra.get("short") else [])
    help_text = field.description or ""
    kwargs: dict[str, Any]
    if name in required and not config_file:
        kwargs = {"required": True}  # click says so in the help
    else:
        kwargs = {"default": None}  # not given: the config file's value or the default holds
        if name in required:
            help_text += "  [required]"
        else:
            default = extra.get("default_text") or _describe_default(field.default)
            help_text += f"  [default: {default}]"
    kwargs["help"] = help_text
    if base is bool:
        decls = [f"{flag}/--no-{flag[2:]}"]
    elif typing.get_origin(base) is tuple:
        kwargs["multiple"] = True
    elif typing.get_origin(base) is Literal:
        kwargs["type"] = click.Choice([str(v) for v in typing.get_args(base)])
    elif isinstance(base, type) and issubclass(base, enum.Enum):
        kwargs["type"] = click.Choice([str(member.value) for member in base])
    else:
        kwargs["type"] = base
    return click.option(*decls, name, **kwargs)


def settings_options(
    model: type[Settings],
    *,
    skip: Iterable[str] = (),
    required: Iterable[str] = (),
    config_file: bool = False,
) -> Callable[[Any], Any]:
    """A decorator adding one option per field of ``model`` (except ``skip``).

    A ``required`` setting must be given as a flag, or, for a command with a
    ``config_file``, as a flag or in the file (checked when the settings are built).
    """
    skipped = set(skip)
    required = set(required)

    def decorate(command: Any) -> Any:
        for name, field in reversed(list(model.model_fields.items())):
            if name not in skipped:
                command = _option(name, field, required, config_file)(command)
        return command

    return decorate


def from_flags(model: type[SettingsT], options: dict[str, Any]) -> SettingsT:
    """``model`` built from a command's flags; a flag not given keeps the setting's default."""
    given = {name: value for name, value in options.items() if value is not None and value != ()}
    return validate(model, given)
