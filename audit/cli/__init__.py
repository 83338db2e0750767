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
# click's UsageError as raised by the click that typer runs on (recent typer vendors its own copy).
_USAGE_ERROR = typer.BadParameter.__mro__[1]


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    if debug:
        sys.argv.remove("--debug")
    from rrf.errors import UserError

    try:
        # Not standalone: click would print a usage block and a boxed error; we print one line instead.
        code = app(standalone_mode=False, prog_name="rrf-audit")
    except _USAGE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: typer has printed its help already
            sys.exit(0)
        if debug:
            raise
        command = exc.ctx.command_path if exc.ctx else "rrf-audit"
        err_console.print(f"[bold red]error:[/] {_one_line(exc.format_message())} (see '{command} --help')",
                          soft_wrap=True, markup=True)
        sys.exit(2)
    except typer.Abort:
        err_console.print("[bold red]aborted[/]")
        sys.exit(130)
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
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
