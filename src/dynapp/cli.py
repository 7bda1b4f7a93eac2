"""The ``dynapp`` command line.  Each command parses its options and calls one library function."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="dynapp: Dynamic Appearance (PWTP) for video action recognition.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main() -> None:
    """Dynamic Appearance: the Pixel-Wise Temporal Projection and joint training with MGDA."""


@app.command()
def version() -> None:
    """Print the installed dynapp version."""
    from dynapp import __version__

    typer.echo(__version__)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
