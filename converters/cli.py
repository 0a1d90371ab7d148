"""The host commands of `noa-edge`: simulate, validate, train, nomogram, evaluate, convert.

`register(app)` adds them to a Typer app. edge/cli.py finds it through the entry-point group
`noa_edge.commands` (pyproject.toml), so the device package never imports converters. Without the
[train] extra it adds nothing and raises `TrainExtraMissing` (also an ImportError) with a one-line hint.
Each command parses its options, calls its stage (converters.simulate, .dataset, .train, .nomogram,
.evaluate, .convert) and turns the stage's errors into one line on stderr and an exit code. The stages
import TensorFlow, scikit-learn and matplotlib inside their functions, so `noa-edge --help` stays fast.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import warnings
from pathlib import Path

import typer

from converters.bundle_onnx import register as register_bundle_onnx
from converters.errors import TrainExtraMissing

TRAIN_EXTRA_MODULES = ("tensorflow", "sklearn")  # the [train] extra is there when these are importable
HOST_COMMANDS = ("simulate", "validate", "train", "nomogram", "evaluate", "convert", "bundle-ood", "bundle-onnx",
                 "recalibrate")


def missing_train_extra() -> list[str]:
    """[train]-extra modules that cannot be found (found by name: nothing is imported)."""
    missing = []
    for module in TRAIN_EXTRA_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def register(app: typer.Typer) -> None:
    """Add the host commands to `app`, in data-path order; raise TrainExtraMissing (adding nothing)
    when the [train] extra is not installed."""
    missing = missing_train_extra()
    if missing:
        raise TrainExtraMissing(f"host commands ({', '.join(HOST_COMMANDS)}) need the [train] extra "
                                f"({', '.join(missing)} not installed): run  pip install -e '.[train]'")
    _register_simulate(app)
    _register_validate(app)
    _register_train(app)
    _register_nomogram(app)
    _register_evaluate(app)
    _register_convert(app)
    _register_bundle_ood(app)
    _register_recalibrate(app)
    register_bundle_onnx(app)


# ---------------------------------------------------------------------------------------- simulate
def _register_simulate(app: typer.Typer) -> None:
    from converters.phantom import DEFAULT_COUNTS, DEFAULT_IMAGE_SIGNAL

    @app.command("simulate")
    def simulate_cmd(
        out: Path = typer.Argument(..., help="Output dataset directory (created; must be new or empty)."),
        oa: int = typer.Option(DEFAULT_COUNTS["OA"], "--oa", help="Obstructive azoospermia patients."),
        noa: int = typer.Option(DEFAULT_COUNTS["NOA"], "--noa", help="Non-obstructive azoospermia patients."),
        controls: int = typer.Option(DEFAULT_COUNTS["control"], "--controls", help="Age-matched controls."),
        seed: int = typer.Option(0, "--seed", help="Randomness; same seed -> byte-identical CSVs and images."),
        external: int = typer.Option(100, "--external",
                                     help="Patients in the external (other scanner) cohort, "
                                          "written to OUT/external; 0 = none."),
        image_signal: float = typer.Option(DEFAULT_IMAGE_SIGNAL, "--image-signal",
                                           help="How strongly severity shows in the image (0 = not at all)."),
        cine: Path = typer.Option(None, "--cine", help="Also write a scan video (.avi MJPG or .mp4 mp4v)."),
        workers: int = typer.Option(min(2, os.cpu_count() or 1), "--workers", help="Rendering processes."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing phantom dataset in OUT."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Write a phantom cohort (synthetic, not patient data) as a dataset directory."""
        from converters.errors import PhantomError
        from converters.simulate import simulate

        t0 = time.perf_counter()
        try:
            res = simulate(out, oa, noa, controls, seed, external, image_signal, workers, cine,
                           progress=not quiet, overwrite=overwrite)
        except PhantomError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        dt = time.perf_counter() - t0
        typer.echo(f"wrote {res['images']} images to {res['development']}")
        if "external" in res:
            typer.echo(f"wrote {res['external_images']} images to {res['external']} (external scanner)")
        if "cine" in res:
            typer.echo(f"wrote cine {res['cine']}")
        typer.echo(f"done in {dt:.1f} s")


# ---------------------------------------------------------------------------------------- validate
def _print_summary(summary: dict, echo) -> None:
    echo(f"dataset {summary['name']!r} ({summary['source_kind']}) at {summary['root']}, "
         f"volume formula {summary['volume_formula']}")
    echo("")
    echo(f"{'group':<10}{'patients':>10}{'images':>10}")
    for g, c in summary["groups"].items():
        echo(f"{g:<10}{c['patients']:>10}{c['images']:>10}")
    echo(f"{'total':<10}{summary['patients']:>10}{summary['images']:>10}")
    echo("")
    echo(f"{'missing values':<28}{'count':>8}{'%':>8}")
    for file, cols in summary["missing"].items():
        for col, m in cols.items():
            echo(f"{file + ' ' + col:<28}{m['missing']:>8}{m['percent']:>8.1f}")


def validate_command(dataset: Path, no_images: bool, json_file: Path | None, echo, echo_err) -> int:
    """Run validation and print the result. Returns the exit code: 0 valid, 2 errors."""
    from converters import dataset as dataset_mod  # looked up at call time (tests replace load_dataset)
    from converters.dataset import DatasetError, Problem, format_problems

    max_printed = 50
    report: dict = {"dataset": str(dataset), "ok": False}
    try:
        ds = dataset_mod.load_dataset(dataset, check_images=not no_images)
    except DatasetError as exc:
        errors, warnings_ = exc.problems, exc.warnings
    except Exception as exc:  # noqa: BLE001 - never a traceback: any failure becomes a problem naming the dataset
        errors, warnings_ = [Problem(str(dataset), None, None,
                                     f"unexpected error while validating: {type(exc).__name__}: {exc}")], []
    else:
        errors, warnings_ = [], ds.warnings
        report.update(ok=True, summary=ds.summary())
        _print_summary(report["summary"], echo)

    if warnings_:
        echo_err(f"\n{len(warnings_)} warning{'s' if len(warnings_) != 1 else ''}:")
        echo_err(format_problems(warnings_, max_printed))
    if errors:
        echo_err(f"\n{len(errors)} error{'s' if len(errors) != 1 else ''} in {dataset}:")
        echo_err(format_problems(errors, max_printed))
        if len(errors) > max_printed and json_file is None:
            echo_err("(use --json FILE for the full list)")
    report["errors"] = [p.to_dict() for p in errors]
    report["warnings"] = [p.to_dict() for p in warnings_]
    if json_file is not None:
        try:
            Path(json_file).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            echo_err(f"{json_file}: cannot write the JSON report: {exc.strerror or exc}")
            return 2
    if errors:
        return 2
    echo(f"\nOK: {dataset} is a valid dataset")
    return 0


def _register_validate(app: typer.Typer) -> None:
    @app.command("validate")
    def validate(
        dataset: Path = typer.Argument(..., help="Dataset directory (dataset.json, patients.csv, "
                                       "images.csv, images/)."),
        no_images: bool = typer.Option(False, "--no-images",
                                       help="Check the CSVs only; do not open image files."),
        json_file: Path = typer.Option(None, "--json", help="Also write the full report as JSON."),
    ) -> None:
        """Validate a dataset directory: summary table and exit 0, or every problem and exit 2."""
        code = validate_command(dataset, no_images, json_file, typer.echo,
                                lambda msg: typer.echo(msg, err=True))
        raise typer.Exit(code)


# ------------------------------------------------------------------------------------------- train
def _register_train(app: typer.Typer) -> None:
    from converters.models import BACKBONES

    @app.command("train")
    def train_cmd(
        dataset: Path = typer.Argument(..., help="Dataset directory (see docs/CONTRACTS.md)."),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory (re-running the same one resumes)."),
        backbones: str = typer.Option(",".join(BACKBONES), "--backbones",
                                      help="Comma-separated subset of " + ", ".join(BACKBONES) + "."),
        folds: int = typer.Option(None, "--folds", help="Cross-validation folds by patient [5; --quick 2]."),
        epochs: int = typer.Option(None, "--epochs", help="Maximum epochs per fold [30; --quick 1]."),
        batch_size: int = typer.Option(16, "--batch-size"),
        input_size: int = typer.Option(None, "--input-size", help="Model input side in px [224; --quick 64]."),
        seed: int = typer.Option(0, "--seed"),
        patience: int = typer.Option(5, "--patience",
                                     help="Early-stopping patience (epochs) on the inner validation AUC."),
        weights: str = typer.Option(None, "--weights",
                                    help="imagenet (Keras cache ~/.keras/models or KERAS_HOME, else Keras "
                                    "downloads it), or a local Keras no-top .h5: PATH (one backbone) or "
                                    "NAME=PATH|imagenet,... Without it, weights start from scratch."),
        precision: str = typer.Option("auto", "--precision",
                                      help="auto|fp32|bf16: bf16 = Keras mixed_bfloat16 (head and saved model "
                                      "stay fp32); auto = bf16 where the CPU has avx512_bf16/amx_bf16, "
                                      "except NASNetMobile (measured slower) and --quick."),
        include_controls: bool = typer.Option(False, "--include-controls", help="Add controls as label 0."),
        quick: bool = typer.Option(False, "--quick", help="Smoke run: 64 px, 1 epoch, 2 folds, <= 40 images."),
        max_images: int = typer.Option(None, "--max-images", help="Class-balanced patient subsample [--quick 40]."),
        learning_rate: float = typer.Option(None, "--learning-rate",
                                            help="Adam [1e-3 from scratch, 1e-4 with weights]."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars or log lines on the terminal."),
    ) -> None:
        """Train the backbones with patient-grouped CV, pick the best, save RUN/model.keras + reports."""
        from converters.cv_report import ci_text, fmt
        from converters.dataset import DatasetError
        from converters.errors import TrainError, WeightsError
        from converters.train import make_config, train

        try:
            cfg = make_config(dataset, out, backbones, folds, epochs, batch_size, input_size, seed, patience,
                              weights, include_controls, quick, max_images, learning_rate, progress=not quiet,
                              precision=precision)
            report = train(cfg)
        except (TrainError, WeightsError, TrainExtraMissing) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        except DatasetError as exc:
            typer.echo(f"error: dataset {dataset}: {exc}", err=True)
            raise typer.Exit(2) from exc
        except KeyboardInterrupt:
            typer.echo(f"interrupted; finished folds are kept in {out}/folds (re-run the same command to resume)",
                       err=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - never a traceback on the terminal: the log file has it
            typer.echo(f"error: training failed: {type(exc).__name__}: {exc} (details in {out}/train.log)", err=True)
            raise typer.Exit(1) from exc
        sel = report["selected_backbone"]
        im = report["backbones"][sel]["pooled"]["image"]
        for name, res in report["backbones"].items():
            m = res["pooled"]["image"]
            typer.echo(f"{name:<15} pooled OOF AUC {fmt(m['auc'])} {ci_text(m)}  "
                       f"patient {fmt(res['pooled']['patient']['auc'])}  folds {res['fold_wall_s']:.0f} s")
        typer.echo(f"selected {sel} (AUC {fmt(im['auc'])}); wrote {out}/model.keras, {out}/cv_report.html, "
                   f"{out}/oof_predictions.csv")


# ---------------------------------------------------------------------------------------- nomogram
def _nomogram_rows(run: Path, dataset, backbone):
    from converters.nomogram import joined_rows, load_dataset_for, read_oof

    probs, _, run_json = read_oof(Path(run), backbone)
    ds = load_dataset_for(Path(run), run_json, dataset)
    return joined_rows(ds, probs)[0]


def _register_nomogram(app: typer.Typer) -> None:
    from converters.nomogram import CANDIDATES, DEFAULT_PREDICTORS

    @app.command("nomogram")
    def nomogram_cmd(
        run: Path = typer.Argument(..., help="Training run directory (oof_predictions.csv, run.json)."),
        dataset: Path = typer.Option(None, "--dataset", help="Dataset directory (default: run.json 'dataset')."),
        predictors: str = typer.Option(",".join(DEFAULT_PREDICTORS), "--predictors",
                                       help=f"Comma-separated model predictors from: {', '.join(CANDIDATES)}; "
                                            "'significant' = those with univariable p < 0.05."),
        bootstrap: int = typer.Option(200, "--bootstrap",
                                      help="Bootstrap resamples for internal validation (0 = none)."),
        seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
        backbone: str = typer.Option(None, "--backbone", help="Backbone whose OOF probabilities to use "
                                                               "(default: run.json selected_backbone)."),
        threshold: str = typer.Option("youden", "--threshold",
                                      help="Threshold rule on the development data: 'youden', a number in (0, 1), "
                                           "'sens=0.95' (highest threshold with sensitivity >= 0.95) or 'spec=0.95'."),
    ):
        """Fit the nomogram on out-of-fold DL probabilities + clinical data; write nomogram.json and the report."""
        from converters.dataset import DatasetError
        from converters.errors import ModelInputError, NomogramInputError
        from converters.nomogram import analyse, univariable
        from edge.nomogram import NomogramError

        try:
            if bootstrap < 0:
                raise NomogramInputError(f"--bootstrap must be >= 0, got {bootstrap}")
            if predictors.strip() == "significant":
                rows = _nomogram_rows(run, dataset, backbone)
                names = [u["name"] for u in univariable(rows) if u.get("p") is not None and u["p"] < 0.05]
                if not names:
                    raise NomogramInputError("no candidate has univariable p < 0.05")
            else:
                names = [p.strip() for p in predictors.split(",") if p.strip()]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rep = analyse(run, dataset=dataset, predictors=names, bootstrap=bootstrap, seed=seed, backbone=backbone,
                              threshold=threshold)
        except (NomogramInputError, DatasetError, ModelInputError, NomogramError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        d = rep["discrimination"]["nomogram"]
        typer.echo(f"nomogram ({' + '.join(rep['model']['predictors'])}) on {rep['flow']['analysed_images']} images / "
                   f"{rep['flow']['analysed_patients']} patients: AUC {d['auc']:.3f} "
                   f"(95% CI {d['ci'][0]:.3f}-{d['ci'][1]:.3f})")
        for k, c in rep["comparisons"].items():
            typer.echo(f"  vs {k}: AUC {c['auc2']:.3f}, DeLong p = {c['p']:.3g}")
        if rep["schoor_rule"] and "vs_nomogram" in rep["schoor_rule"]:
            typer.echo(f"  vs Schoor rule: AUC {rep['schoor_rule']['auc']['auc']:.3f}, "
                       f"DeLong p = {rep['schoor_rule']['vs_nomogram']['p']:.3g}")
        if rep["validation"]:
            v = rep["validation"]["indexes"]
            typer.echo(f"  bootstrap (B={rep['validation']['B_used']}): "
                       f"optimism-corrected C {v['C']['corrected']:.3f}, "
                       f"slope {v['Slope']['corrected']:.3f}, Brier {v['Brier']['corrected']:.3f}")
        pat, at = rep["patient"], rep["performance"]["at_threshold"]
        typer.echo(f"  threshold {at['threshold']:.3f} ({rep['threshold_rule']}): sensitivity "
                   f"{_fmt(at['sensitivity']['value'])}, specificity {_fmt(at['specificity']['value'])}; patient level "
                   f"({pat['n_patients']} patients): AUC {_fmt(pat['auc'])}, sensitivity {_fmt(pat['sensitivity'])}, "
                   f"specificity {_fmt(pat['specificity'])}")
        for note in rep["notes"]:
            typer.echo(f"  warning: {note}")
        typer.echo(f"wrote {run / 'nomogram.json'}, {run / 'report.html'}, {run / 'report.json'}")


# ---------------------------------------------------------------------------------------- evaluate
def _fmt(x, digits: int = 3) -> str:
    """A number for the console; None/nan (not estimable) as 'n/a', never a made-up value."""
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def _register_evaluate(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        source: Path = typer.Argument(..., help="Firmware bundle directory or training run directory."),
        dataset: Path = typer.Argument(..., help="Dataset directory of the new cohort."),
        json_out: Path = typer.Option(None, "--json", help="Write the numbers to this JSON file."),
        dl_probs: Path = typer.Option(None, "--dl-probs", help="CSV image_id,prob with precomputed DL probabilities "
                                                                "(skips running the network)."),
        variant: str = typer.Option(None, "--variant",
                                    help="Bundle model variant (default: the bundle's CPU default)."),
        threshold: str = typer.Option("frozen", "--threshold",
                                      help="'frozen' (the bundle's stored threshold), a number in (0, 1), or "
                                           "'youden' / 'sens=0.95' / 'spec=0.95' chosen on THIS cohort (optimistic)."),
    ):
        """Score a frozen model + nomogram on a new cohort (no refit; threshold carried over)."""
        from converters.dataset import DatasetError
        from converters.errors import NomogramInputError
        from converters.evaluate import evaluate
        from edge.nomogram import NomogramError
        from edge.runtime import ModelError, RuntimeUnavailable

        try:
            res = evaluate(source, dataset, dl_probs=dl_probs, variant=variant, threshold=threshold)
        except (NomogramInputError, DatasetError, NomogramError, ModelError, RuntimeUnavailable,
                TrainExtraMissing) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"{res['n_images']} images / {res['n_patients']} patients: AUC {_fmt(res['auc'])} "
                   f"(95% CI {_fmt(res['auc_ci'][0])}-{_fmt(res['auc_ci'][1])}); DL alone {_fmt(res['dl_auc'])}; "
                   f"at threshold {res['threshold']:.3f} ({res['threshold_rule']}): sensitivity "
                   f"{_fmt(res['sensitivity'])}, specificity {_fmt(res['specificity'])}; calibration slope "
                   f"{_fmt(res['calibration_slope'], 2)}, in-the-large {_fmt(res['calibration_in_the_large'], 2)}")
        pat = res["patient"]
        typer.echo(f"  patient level ({pat['n_patients']} patients): AUC {_fmt(pat['auc'])}, sensitivity "
                   f"{_fmt(pat['sensitivity'])}, specificity {_fmt(pat['specificity'])}")
        for note in res["notes"]:
            typer.echo(f"  note: {note}")
        if res["excluded"]:
            typer.echo(f"  excluded: {res['excluded']}")
        if json_out:
            json_out.write_text(json.dumps(res, indent=2))
            typer.echo(f"wrote {json_out}")


# ----------------------------------------------------------------------------------------- convert
def _register_convert(app: typer.Typer) -> None:
    @app.command("convert")
    def convert_command(
        run: Path = typer.Argument(..., help="Training run folder (RUN/model.keras, run.json, nomogram.json)."),
        out: Path = typer.Option(..., "--out", help="Bundle folder to write, e.g. firmware_assets/NAME."),
        targets: str = typer.Option("cpu,coral,jetson", help="Comma-separated: cpu, coral, jetson."),
        name: str = typer.Option(None, help="Bundle name (default: the folder name)."),
        dataset: Path = typer.Option(None, help="Dataset folder (default: run.json's 'dataset')."),
        calibration_size: int = typer.Option(200, help="int8 calibration ROIs (stratified by class, whole patients)."),
        seed: int = typer.Option(0, help="Seed of the calibration / held-out split."),
        synthetic_demo: bool = typer.Option(None, "--synthetic-demo/--no-synthetic-demo",
                                            help="Flag the bundle as a synthetic demo "
                                                 "(default: if the dataset is a phantom)."),
        max_fidelity_rois: int = typer.Option(None, help="Cap on held-out ROIs for the fidelity report."),
        int8_retry: bool = typer.Option(True, "--int8-retry/--no-int8-retry",
                                        help="If int8 misses a target, try per-tensor and more calibration data."),
        overwrite: bool = typer.Option(False, help="Replace an existing bundle in OUT."),
    ) -> None:
        """Convert a trained model into a firmware bundle: TFLite fp32/fp16/int8, ONNX, fidelity, Edge TPU preflight."""
        from converters.convert import ConvertConfig, convert
        from converters.errors import ConvertError

        try:
            convert(run, out, ConvertConfig(targets=targets, name=name, dataset=dataset,
                                            calibration_size=calibration_size, seed=seed,
                                            synthetic_demo=synthetic_demo, max_fidelity_rois=max_fidelity_rois,
                                            int8_retry=int8_retry, overwrite=overwrite))
        except (ConvertError, TrainExtraMissing) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None


# ---------------------------------------------------------------------------------------- bundle-ood
def _register_bundle_ood(app: typer.Typer) -> None:
    @app.command("bundle-ood")
    def bundle_ood_command(
        bundle: Path = typer.Argument(..., help="Firmware bundle folder to add the out-of-distribution guard to."),
        dataset: Path = typer.Argument(..., help="The dataset the bundle's model was trained on."),
        seed: int = typer.Option(0, help="Seed of the fit / threshold patient split."),
    ) -> None:
        """Add the OOD guard to an existing bundle (no retraining): `features` output, ood.npz, manifest."""
        from converters.errors import ConvertError
        from converters.ood_fit import add_ood

        try:
            manifest = add_ood(bundle, dataset, seed=seed)
        except ConvertError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        ood = manifest["ood"]
        typer.echo(f"{bundle}: OOD guard added ({ood['components']} directions, fitted on {ood['fit']['rois']} "
                   f"ROIs); thresholds " + ", ".join(f"{k} {v:.1f}" for k, v in ood["thresholds"].items()))


# ------------------------------------------------------------------------------------------ recalibrate
def _register_recalibrate(app: typer.Typer) -> None:
    @app.command("recalibrate")
    def recalibrate_cmd(
        bundle: Path = typer.Argument(..., help="The frozen parent bundle (read only)."),
        dataset: Path = typer.Argument(..., help="The site's own dataset (images + clinical values + outcome)."),
        out: Path = typer.Option(..., "--out", help="New bundle folder, e.g. firmware_assets/NAME (must be new)."),
        method: str = typer.Option("auto", "--method", help="auto (closed testing procedure), intercept, slope "
                                                            "or refit."),
        threshold: str = typer.Option("youden", "--threshold",
                                      help="Threshold rule on the site's data after the update: 'youden', a number "
                                           "in (0, 1), 'sens=0.95' or 'spec=0.95'."),
        seed: int = typer.Option(0, "--seed", help="Recorded in the lineage (the update itself is deterministic)."),
        variant: str = typer.Option(None, "--variant", help="Bundle model variant (default: the CPU default)."),
        sign_key: Path = typer.Option(None, "--sign-key", help="Sign the new bundle with the site's Ed25519 key."),
        json_out: Path = typer.Option(None, "--json", help="Also write the report JSON to this file."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Update a frozen bundle's nomogram on a site's patients (CNN unchanged); write a new bundle + report."""
        from converters.errors import ConvertersError
        from converters.recalibrate import recalibrate
        from edge.errors import EdgeError

        try:
            rep = recalibrate(bundle, dataset, out, method=method, threshold=threshold, seed=seed, variant=variant,
                              progress=not quiet, sign_key=sign_key)
        except (ConvertersError, EdgeError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        b, a, c = rep["before"], rep["after"], rep["cohort"]
        typer.echo(f"{c['n_images']} images / {c['n_patients']} patients ({c['events_images']} NOA images): "
                   f"method {rep['method']} (requested {rep['method_requested']}): {rep['method_reason']}")
        for t in rep["closed_test"]:
            typer.echo(f"  {t['test']}: LR chi2 {t['lr_chi2']:.2f}, df {t['df']}, p {t['p']:.3g}")
        for name, r in (("before", b), ("after (apparent)", a)):
            typer.echo(f"  {name}: calibration slope {_fmt(r['calibration_slope'], 2)}, in-the-large "
                       f"{_fmt(r['calibration_in_the_large'], 2)}, AUC {_fmt(r['auc'])}, Brier {_fmt(r['brier'])}")
        for note in rep["notes"]:
            typer.echo(f"  warning: {note}")
        if json_out:
            json_out.write_text(json.dumps(rep, indent=2))
        typer.echo(f"wrote {rep['bundle']} (recalibration_report.html inside)")
