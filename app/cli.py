"""The ``curation`` command line.

Each command lives in the module named after what it does and is imported only when it
runs, so ``curation --help`` stays fast and model-free commands never import torch or Beam.
Every command shares one error path: unusable input or configuration
(:class:`curation.errors.UsageError`) prints one line and exits 2, Ctrl-C prints one line
and exits 130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading

import click

from curation.errors import UsageError

INTERRUPTED_EXIT = 130

#: command name -> "module:attribute" of its click command, and a one-line summary.
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": (
        "app.inspect:inspect_command",
        "Dry run: read and decode an input, count rows per reason.",
    ),
    "run": (
        "app.run:run_command",
        "Caption, filter and deduplicate a dataset (the main job).",
    ),
    "dedup": (
        "app.dedup:dedup_command",
        "Re-run near-duplicate removal over a finished run, without models.",
    ),
    "report": (
        "app.report:report_command",
        "Write an offline HTML report of a finished run (plots, samples, warnings).",
    ),
    "explain": (
        "app.explain:explain_command",
        "Everything a run recorded about one input key, without models.",
    ),
    "diff": (
        "app.diff:diff_command",
        "Compare two runs: counts per reason and decisions that changed.",
    ),
    "rethreshold": (
        "app.rethreshold:rethreshold_command",
        "Decide every scored text again at another threshold, without models.",
    ),
    "finetune": (
        "app.finetune:finetune_command",
        "Finetune a BLIP captioner or filter on clean pairs.",
    ),
    "demo": (
        "app.demo:demo_command",
        "Run the whole job on a generated shapes dataset and measure quality.",
    ),
}


def _interrupted() -> None:
    click.echo("\ninterrupted; re-run the same command to resume", err=True)
    sys.exit(INTERRUPTED_EXIT)


class LazyGroup(click.Group):
    """A click group that imports a command's module only when the command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        target, _ = COMMANDS[cmd_name]
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context) -> object:
        interrupted = threading.Event()

        def on_interrupt(_signum: int, _frame: object) -> None:
            interrupted.set()
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_interrupt)
        try:
            return super().invoke(ctx)
        except UsageError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except Exception as err:
            from curation.storage import credentials_problem

            if problem := credentials_problem(err):
                click.echo(f"error: {problem}", err=True)
                sys.exit(2)
            if not interrupted.is_set():
                raise
            # a stage wrapped the interrupt in its own error (Beam does): still an interrupt
            _interrupted()
        except KeyboardInterrupt:
            _interrupted()
        finally:
            signal.signal(signal.SIGINT, previous)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, summary) for name, (_, summary) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="capfilt-curation")
def main() -> None:
    """CapFilt curation: caption, filter and deduplicate image/alt-text pairs."""


if __name__ == "__main__":
    main()
