"""`noa-edge bench`: the command line over the bench (options, error messages, exit codes); the work is in
report.run_bench. Bad options and unreadable inputs exit 2 with one line, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..daemon import resolve_bundle
from .report import format_report, run_bench, write_json
from .stats import BenchError, compare


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(app: typer.Typer) -> None:
    """Add the `bench` command to `app`."""

    @app.command("bench")
    def bench_cmd(
        bundle: str = typer.Option("firmware_assets/demo-phantom", help="Firmware bundle directory."),
        variants: str = typer.Option("fp32,fp16,int8,edgetpu", help="Comma list of fp32, fp16, int8, edgetpu."),
        backends: str = typer.Option("litert,tflite-runtime,onnxruntime,keras",
                                     help="Comma list of litert, tflite-runtime, onnxruntime, keras (host only), "
                                          "litert-builtin (LiteRT without XNNPACK), litert-latest (XNNPACK latest "
                                          "features). Missing ones are skipped "
                                          "and listed."),
        threads: str = typer.Option("1,2", help="Comma list of thread counts, e.g. 1,2."),
        runs: int = typer.Option(50, help="Timed inferences per contender (interleaved)."),
        warmup: int = typer.Option(5, help="Warm-up inferences per contender."),
        json_out: Path = typer.Option(None, "--json", help="Write the full report as JSON here."),
        pipeline: bool = typer.Option(False, "--pipeline", help="Also time the full frame-to-result path."),
        sustained: float = typer.Option(None, "--sustained", help="Feed the phantom cine for this many seconds."),
        fps: float = typer.Option(15.0, help="Frame rate of the --sustained feed."),
        compare_to: Path = typer.Option(None, "--compare", help="An earlier --json report to compare against."),
        keras_model: Path = typer.Option(None, help="Keras model for the keras backend (default: BUNDLE/model.keras "
                                                    "or the provenance run's model.keras)."),
        cine: Path = typer.Option(None, help="Video for --pipeline/--sustained (default: the shipped phantom cine)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Latency, throughput and memory per variant × backend × threads (interleaved), the pipeline
        stages, and a sustained live feed; prints a table and optionally writes JSON."""
        old = None
        if compare_to is not None:
            try:
                old = json.loads(Path(compare_to).read_text())
                if not isinstance(old, dict) or "results" not in old:
                    raise ValueError("no 'results' list")
            except (OSError, ValueError) as exc:
                typer.echo(f"error: --compare {compare_to}: not a bench JSON report ({exc})", err=True)
                raise typer.Exit(2) from None
        try:
            thread_list = [int(t) for t in _split(threads)]
        except ValueError:
            typer.echo(f"error: --threads {threads!r}: expected a comma list of integers, e.g. 1,2", err=True)
            raise typer.Exit(2) from None
        try:
            report = run_bench(resolve_bundle(bundle), _split(variants), _split(backends), thread_list, runs, warmup,
                               pipeline=pipeline, sustained=sustained, fps=fps, keras_model=keras_model, cine=cine,
                               quiet=quiet)
        except BenchError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(format_report(report))
        if old is not None:
            typer.echo("")
            typer.echo(compare(report, old))
        if json_out is not None:
            write_json(report, json_out)
            typer.echo(f"\nJSON written to {json_out}")
