"""`noa-edge bench`: the command line over the bench (options, error messages, exit codes); the work is in
report.run_bench. Bad options and unreadable inputs exit 2 with one line, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .. import config_file
from ..bundle import BundleError
from ..bundle import load as load_bundle
from ..daemon import resolve_bundle
from ..runtime import RuntimeChoiceError, normalize_runtime
from ..runtime_select import SelectionError
from ..runtime_select import select as select_runtime
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
        runtime: str = typer.Option("auto", help="auto (every installed one) | litert | tflite-runtime | onnxruntime "
                                                 "| edgetpu: bench only this runtime."),
        select: bool = typer.Option(False, "--select", help="Probe the runtimes as `serve --runtime auto` does (with "
                                                           "--runs timed runs each), print the choice and write it "
                                                           "as `runtime` in the device config's [serve] table."),
        config: Path = typer.Option(None, "--config", envvar=config_file.ENV_VAR,
                                    help=f"Device config --select writes to (default {config_file.DEFAULT_PATH})."),
    ) -> None:
        """Latency, throughput and memory per variant × backend × threads (interleaved), the pipeline
        stages, and a sustained live feed; prints a table and optionally writes JSON."""
        if select:
            _select_and_write(resolve_bundle(bundle), runs, config)
            return
        try:
            chosen = normalize_runtime(runtime)
        except RuntimeChoiceError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if chosen != "auto":
            backends, variants = ("litert", "edgetpu") if chosen == "edgetpu" else (chosen, variants)
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


def _select_and_write(bundle: Path, runs: int, config: Path | None) -> None:
    """`bench --select`: the probe `serve --runtime auto` runs at start, with `runs` timed runs per runtime, and its
    choice written to the device config ([serve] runtime), so the service starts on it without probing."""
    path = config or config_file.resolve_path(None) or config_file.DEFAULT_PATH
    try:
        sel = select_runtime(load_bundle(bundle), "auto", runs=max(runs, 1), force_probe=True)
    except (BundleError, SelectionError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    report = sel.report()
    for name, ms in report["probe_median_ms"].items():
        typer.echo(f"  {name:15s} median {ms:8.2f} ms over {report['probe_runs']} warm runs")
    for name, why in report["skipped"].items():
        typer.echo(f"  {name:15s} skipped: {why}")
    typer.echo(f"selected: {sel.runtime} ({sel.variant} variant): {sel.reason}")
    try:
        config_file.set_key(path, "serve", "runtime", sel.runtime)
    except (config_file.ConfigFileError, OSError) as exc:
        typer.echo(f"error: cannot write {path}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote runtime = \"{sel.runtime}\" to [serve] in {path}")
