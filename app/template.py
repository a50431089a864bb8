"""``curation run`` as a Dataflow Flex Template: parameters in, one detached job out.

Dataflow's template launcher starts ``docker/flex/launch.py`` with the template's
parameters and Dataflow's own options, all as ``--name=value``. :func:`run_arguments` turns
the parameters (the settings of :class:`curation.config.RunConfig`, named with underscores,
lists comma-separated) into `curation run`'s flags and everything else into ``--beam-arg``s,
so a template launch runs the same command, checks and errors as the command line, always
detached: the job commits its own result (a launcher cannot wait for it).

:func:`metadata` is the template's ``metadata.json``, generated from the same settings,
with a regex per parameter that Dataflow checks before it starts anything; ``python -m
app.template > docker/flex/metadata.json`` writes it.
"""

from __future__ import annotations

import json
import sys
import typing
from collections.abc import Sequence
from typing import Any, Literal

from pydantic.fields import FieldInfo

from app.options import base_type, flag_name
from curation.config import RunConfig

#: Settings a template does not expose: the engine and the launch fix them.
NOT_PARAMETERS = ("workers", "progress", "detach", "beam_args")
#: Parameters that must name object storage (Dataflow workers share no disk).
OBJECT_STORE = r"(gs|s3)://[^,]+"
#: Parameters whose value must be given.
REQUIRED = ("input", "out")
CONFIG = "config"


def _pattern(field: FieldInfo) -> str | None:
    for item in field.metadata:
        pattern = getattr(item, "pattern", None)
        if pattern:
            return str(pattern)
    return None


def parameter_regex(name: str, field: FieldInfo) -> str:
    """The regex a parameter's value must match, from the setting's type."""
    base = base_type(field)
    if name == "input":
        return rf"^{OBJECT_STORE}(,{OBJECT_STORE})*$"
    if name in ("out", "dedup_against"):
        return rf"^{OBJECT_STORE}$"
    if base is bool:
        return "^(true|false)$"
    if base is int:
        return "^-?[0-9]+$"
    if base is float:
        return r"^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"
    if typing.get_origin(base) is Literal:
        return "^(" + "|".join(str(v) for v in typing.get_args(base)) + ")$"
    if typing.get_origin(base) is tuple:
        return "^[^,]+(,[^,]+)*$"
    return _pattern(field) or "^.+$"


def parameters() -> dict[str, FieldInfo]:
    """The settings a template launch takes, by name."""
    fields = RunConfig.model_fields
    return {name: field for name, field in fields.items() if name not in NOT_PARAMETERS}


def metadata() -> dict[str, Any]:
    """The Flex Template's ``metadata.json``."""
    entries = [
        {
            "name": CONFIG,
            "label": "Config file",
            "helpText": "YAML file on gs:// with the same keys as the parameters; parameters win.",
            "isOptional": True,
            "regexes": [rf"^{OBJECT_STORE}\.ya?ml$"],
        }
    ]
    for name, field in parameters().items():
        default = field.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = field.description or ""
        if name not in REQUIRED and shown not in (None, "", ()):
            help_text += f" Default: {shown}."
        entries.append(
            {
                "name": name,
                "label": name.replace("_", " ").capitalize(),
                "helpText": help_text
                + (" Comma-separated." if typing.get_origin(base_type(field)) is tuple else ""),
                "isOptional": name not in REQUIRED,
                "regexes": [parameter_regex(name, field)],
            }
        )
    return {
        "name": "CapFilt curation run",
        "description": "Caption, filter and deduplicate image/alt-text pairs (Parquet on "
        "Cloud Storage) into clean and synthetic pairs, decisions and a FAISS index: "
        "`curation run` as one Dataflow job that commits its own result.",
        "parameters": entries,
    }


def run_arguments(argv: Sequence[str]) -> list[str]:
    """The `curation run` command line of a template launch's arguments."""
    known = parameters()
    inputs: list[str] = []
    flags: list[str] = []
    beam: list[str] = []
    for arg in argv:
        name, has_value, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        field = known.get(name)
        if not has_value or (field is None and name != CONFIG):
            beam.append(arg)
        elif name == CONFIG:
            flags += ["--config", value]
        elif name == "input":
            inputs += [v for v in value.split(",") if v]
        elif base_type(field) is bool:
            lowered = value.strip().lower()
            flags.append("--" + ("" if lowered == "true" else "no-") + name.replace("_", "-"))
        elif typing.get_origin(base_type(field)) is tuple:
            for item in value.split(","):
                flags += [flag_name(name, field), item]
        else:
            flags += [flag_name(name, field), value]
    if not any(a.startswith("--runner") for a in beam):
        beam.insert(0, "--runner=DataflowRunner")
    return ["run", *inputs, *flags, *(f"--beam-arg={a}" for a in beam), "--detach", "--no-progress"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run a template launch's arguments as `curation run` (exits like the command)."""
    from app.cli import main as cli

    cli(run_arguments(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    json.dump(metadata(), sys.stdout, indent=2)
    sys.stdout.write("\n")
