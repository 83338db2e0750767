"""``rrf-audit``: one Typer application; each command group lives in its own module of this package.

Commands import the library lazily, so ``rrf-audit --help`` answers without loading torch.
Errors the user can fix (``rrf.UserError``) print one line and exit 2; anything else prints one line
and exits 1; ``--debug`` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from audit.cli import generate, results, toy, validate

app = typer.Typer(
    name="rrf-audit",
    help="Audit what a safer text-to-image diffusion model suppresses, with the relative reward "
    "extracted from the pair (Nuti et al., NeurIPS 2023).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(validate.app, name="validate")
app.add_typer(toy.app, name="toy")
generate.register(app)
results.register(app)


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error (accepted anywhere)."),
) -> None:
    """Global options; ``--debug`` itself is handled in ``main`` so that it works after any subcommand."""

err_console = Console(stderr=True, highlight=False)


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv.remove("--debug")
    from rrf.errors import UserError

    try:
        app()
    except UserError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {_one_line(exc)}", soft_wrap=True)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: one line, not a traceback
        if debug:
            raise
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {_one_line(exc)} "
                          "(rerun with --debug for the traceback)", soft_wrap=True)
        sys.exit(1)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
