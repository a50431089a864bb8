"""Beam runner options: the local runner by default, any other through ``--beam-arg``.

The local runner is the FnApiRunner, in-process (``workers == 1``) or with worker processes;
it never tries the Prism runner, which needs a download. Other runners are checked before
any work: Dataflow needs its project, region and a ``gs://`` temp location, and a runner
whose workers do not share this machine's disk needs input and output on object storage.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from curation.errors import ConfigError
from curation.storage import Location

DATAFLOW_REQUIRED = ("project", "region", "temp_location")
#: Memory of the GPUs Dataflow attaches (``worker_accelerator=type:...``), in GiB.
ACCELERATOR_MEMORY_GIB = {
    "nvidia-tesla-t4": 16,
    "nvidia-tesla-p4": 8,
    "nvidia-tesla-v100": 16,
    "nvidia-tesla-p100": 16,
    "nvidia-l4": 24,
    "nvidia-tesla-a100": 40,
    "nvidia-a100-80gb": 80,
    "nvidia-h100-80gb": 80,
    "nvidia-h100-mega-80gb": 80,
    "nvidia-h200-141gb": 141,
}


@dataclass
class RunnerChoice:
    """The Beam options and runner of a run, and whether its workers share this machine."""

    options: PipelineOptions
    runner: Any  # a runner instance, or None to let Beam pick the one named in the options
    name: str
    local: bool


def _runner_name(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith("--runner="):
            return arg.split("=", 1)[1]
        if arg == "--runner" and i + 1 < len(args):
            return args[i + 1]
    return None


def _workers_on_this_machine(values: dict[str, Any]) -> bool:
    """A portable job whose SDK workers run here: in this process (``LOOPBACK``) or in a
    worker pool on loopback (``EXTERNAL`` at ``localhost:PORT``)."""
    kind = str(values.get("environment_type", "")).upper()
    if kind == "LOOPBACK":
        return True
    host = str(values.get("environment_config", "")).rsplit(":", 1)[0]
    return kind == "EXTERNAL" and host in ("localhost", "127.0.0.1", "[::1]")


def choose_runner(
    beam_args: Sequence[str], workers: int, locations: Sequence[tuple[str, str]]
) -> RunnerChoice:
    """Options and runner from ``--beam-arg``s; :class:`ConfigError` when they cannot work.

    ``locations`` are ``(what, path)`` of everything the workers read or write, which must
    be on object storage for runners whose workers do not share this machine's disk.
    """
    args = list(beam_args)
    try:
        options = PipelineOptions(args)
        values = options.get_all_options(drop_default=True, retain_unknown_options=True)
    except (SystemExit, ValueError) as err:
        raise ConfigError(f"invalid --beam-arg options {' '.join(args)!r}: {err}") from None
    stray = [a for a in args if not a.startswith("-")]
    unknown = sorted(set(values) - set(options.get_all_options(drop_default=True)))
    if stray or unknown:
        named = [repr(a) for a in stray] + [f"--{name}" for name in unknown]
        raise ConfigError(
            f"--beam-arg: {', '.join(named)} is no Beam pipeline option (give each as "
            "--beam-arg=--name=value)"
        )
    name = _runner_name(args)
    if name is None:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        from apache_beam.transforms.environments import SubprocessSDKEnvironment

        direct = options.view_as(DirectOptions)
        direct.direct_num_workers = workers
        if workers == 1:
            direct.direct_running_mode = "in_memory"
            return RunnerChoice(options, FnApiRunner(), "local", local=True)
        # worker processes of our own entry point (pipelines.worker): Beam's harness, quiet
        direct.direct_running_mode = None
        command = f"{sys.executable} -m pipelines.worker"
        runner = FnApiRunner(
            default_environment=SubprocessSDKEnvironment.from_command_string(command)
        )
        logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(
            logging.ERROR
        )
        return RunnerChoice(options, runner, "local", local=True)
    short = name.rsplit(".", 1)[-1]
    if short in ("DataflowRunner", "TestDataflowRunner"):
        missing = [k for k in DATAFLOW_REQUIRED if not values.get(k)]
        if missing:
            flags = ", ".join(f"--beam-arg=--{k}=..." for k in missing)
            raise ConfigError(f"the Dataflow runner needs {flags}")
        if not str(values["temp_location"]).startswith("gs://"):
            raise ConfigError("the Dataflow runner needs a gs:// --temp_location")
    local = short in ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner") or (
        short == "PortableRunner" and _workers_on_this_machine(values)
    )
    if not local:
        for what, where in locations:
            if Location(where).is_local:
                raise ConfigError(
                    f"{what} {where!r} is on this machine's disk, which the {short} workers do "
                    "not see; use object storage (gs://..., s3://...)"
                )
    return RunnerChoice(options, None, short, local=local)


def accelerator(beam_args: Sequence[str]) -> str | None:
    """The GPU type of ``worker_accelerator`` in the Beam options (None when not given)."""
    for arg in beam_args:
        if "worker_accelerator" not in arg:
            continue
        for part in arg.split("worker_accelerator=", 1)[-1].split(";"):
            if part.startswith("type:"):
                return part[len("type:") :]
        return ""
    return None


def accelerator_memory(beam_args: Sequence[str]) -> int | None:
    """Memory in bytes of one GPU of the workers' accelerator, when its type is known."""
    gib = ACCELERATOR_MEMORY_GIB.get(accelerator(beam_args) or "")
    return gib * 2**30 if gib else None
