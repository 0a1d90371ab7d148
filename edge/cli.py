"""The one `noa-edge` command line. Each pipeline stage module adds its own subcommands.

A stage module exposes `register(app: typer.Typer)`. Modules must keep heavy imports (TensorFlow,
scikit-learn) inside the command functions so the CLI starts fast and the device needs no TF.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="noa-edge",
    help="NOA vs OA from testicular ultrasound: host toolchain (simulate, validate, train, nomogram, "
    "convert, evaluate) and edge daemon (serve, bench, bundle).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Order = data path. Each module owns the commands of its stage.
STAGE_MODULES = [
    "converters.phantom",    # simulate
    "converters.dataset",    # validate
    "converters.train",      # train
    "converters.nomogram",   # nomogram, evaluate
    "converters.convert",    # convert
    "edge.bundle",           # bundle verify / info
    "edge.server",           # serve
    "edge.bench",            # bench
]


def _register_all() -> None:
    for name in STAGE_MODULES:  # every stage exists: a missing one is a packaging error, not a skip
        importlib.import_module(name).register(app)


@app.command()
def version() -> None:
    """Print the noa-edge version."""
    from edge import __version__

    typer.echo(f"noa-edge {__version__}")


@app.command()
def demo(port: int = typer.Option(8080, help="Port of the local result page.")) -> None:
    """The main job on the embedded demo bundle: the daemon on the phantom cine (what `make demo` runs)."""
    from edge.server import run_demo

    run_demo(port=port)


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
