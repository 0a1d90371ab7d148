"""`make mutants`: plant each curated bug (tests/mutants/mutants.toml) alone, run the tests meant to catch it.

Each mutant is one exact text replacement in one file, named after the behaviour it breaks. The tool copies
the source tree (edge/, converters/, tests/, benchmarks/, pyproject.toml) into a temporary folder and works
only there, so the working tree is never edited, whatever happens (Ctrl-C, a crash, a hung test). For every
mutant: apply it to the copy, run its tests (pytest -x, a time limit), put the original text back. A mutant
is caught when a test fails; it survived when every test passed. Before the mutants, the union of the
selected tests runs once unmutated: a red baseline would make every mutant look caught.

Prints a table and a JSON summary (also written to test-artifacts/mutants.json); exit status 1 when a
mutant survived, no longer applies (its old text is not found exactly once), or the baseline is red.

    .venv/bin/python tests/mutants/run.py [--only NAME,...] [--list] [--timeout S] [--keep] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = Path(__file__).with_name("mutants.toml")
COPIED = ("edge", "converters", "tests", "benchmarks", "pyproject.toml")
LINKED = ("firmware_assets", "docs")                     # read-only data: linked, not copied
TEST_BUNDLE_CACHE = Path(".pytest_cache") / "d" / "noa-edge-test-bundle"  # saves a TensorFlow build per run
FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


@dataclass
class Mutant:
    name: str
    breaks: str
    file: str
    old: str
    new: str
    tests: list[str]
    status: str = "not run"
    caught_by: str = ""
    seconds: float = 0.0
    detail: str = field(default="", repr=False)


def load_mutants(path: Path = MUTANTS) -> list[Mutant]:
    data = tomllib.loads(path.read_text())
    mutants = []
    for i, entry in enumerate(data.get("mutant", [])):
        missing = [k for k in ("name", "breaks", "file", "old", "new", "tests") if k not in entry]
        if missing:
            raise SystemExit(f"{path.name}: mutant #{i + 1} ({entry.get('name', '?')}) lacks {', '.join(missing)}")
        if entry["old"] == entry["new"]:
            raise SystemExit(f"{path.name}: mutant {entry['name']}: old and new text are the same")
        mutants.append(Mutant(entry["name"], entry["breaks"], entry["file"], entry["old"], entry["new"],
                              list(entry["tests"])))
    names = [m.name for m in mutants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SystemExit(f"{path.name}: duplicate mutant names {dupes}")
    return mutants


def make_copy(dest: Path) -> None:
    def ignore(_dir, names):
        return [n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".pyc")]

    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    for name in LINKED:
        if (ROOT / name).exists():
            (dest / name).symlink_to(ROOT / name)
    if (ROOT / TEST_BUNDLE_CACHE).is_dir():
        shutil.copytree(ROOT / TEST_BUNDLE_CACHE, dest / TEST_BUNDLE_CACHE)


def run_pytest(tree: Path, tests: list[str], timeout: float, per_test: int) -> tuple[str, int | None, str]:
    """("passed" | "failed" | "timeout" | "no tests" | "error", returncode, output) of pytest -x in `tree`."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1",
               TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "--no-header", "-p", "no:randomly",
           f"--timeout={per_test}", *tests]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return "timeout", None, out
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    status = {0: "passed", 1: "failed", 5: "no tests"}.get(proc.returncode, "error")
    return status, proc.returncode, out


def apply(tree: Path, m: Mutant) -> str | None:
    """Original text of the file after planting the mutant, or None (status set) when it does not apply."""
    path = tree / m.file
    if not path.is_file():
        m.status, m.detail = "stale", f"{m.file} not found"
        return None
    text = path.read_text()
    count = text.count(m.old)
    if count != 1:
        m.status = "stale"
        m.detail = f"old text found {count} times in {m.file} (must be exactly once): update mutants.toml"
        return None
    path.write_text(text.replace(m.old, m.new))
    return text


def run_mutant(tree: Path, m: Mutant, timeout: float, per_test: int) -> None:
    original = apply(tree, m)
    if original is None:
        return
    t0 = time.monotonic()
    try:
        status, rc, out = run_pytest(tree, m.tests, timeout, per_test)
    finally:
        (tree / m.file).write_text(original)
    m.seconds = round(time.monotonic() - t0, 1)
    if status == "failed":
        m.status = "caught"
        found = FAILED_LINE.findall(out)
        m.caught_by = found[0] if found else "(failure)"
    elif status == "timeout":
        m.status, m.caught_by = "caught", f"(timeout after {timeout:.0f} s)"
    elif status == "error":
        m.status, m.caught_by = "caught", f"(pytest exit {rc}: collection/import error)"
        m.detail = out[-1500:]
    elif status == "passed":
        m.status = "survived"
    else:
        m.status, m.detail = "stale", "its tests selected nothing (pytest exit 5)"


def table(mutants: list[Mutant]) -> str:
    w = max(len(m.name) for m in mutants)
    lines = [f"{'mutant':<{w}}  {'status':<8}  {'s':>6}  caught by"]
    for m in mutants:
        lines.append(f"{m.name:<{w}}  {m.status:<8}  {m.seconds:>6.1f}  {m.caught_by or m.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated mutant names")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per mutant's test run (default 300)")
    ap.add_argument("--per-test-timeout", type=int, default=240, help="pytest-timeout per test (default 240)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary tree (its path is printed)")
    ap.add_argument("--json", type=Path, default=ROOT / "test-artifacts" / "mutants.json")
    args = ap.parse_args(argv)

    mutants = load_mutants()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {m.name for m in mutants})
        if unknown:
            print(f"unknown mutant(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.name in wanted]
    if args.list:
        for m in mutants:
            print(f"{m.name:<34} {m.file:<28} {m.breaks}  [{' '.join(m.tests)}]")
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="noa-mutants-"))
    started = time.monotonic()
    baseline = "skipped"
    try:
        make_copy(tmp)
        if not args.no_baseline:
            union = list(dict.fromkeys(t for m in mutants for t in m.tests))
            print(f"baseline: {len(union)} test selection(s), unmutated ...", flush=True)
            baseline, _, out = run_pytest(tmp, union, args.timeout * 3, args.per_test_timeout)
            if baseline != "passed":
                print(out[-4000:])
                print(f"baseline is {baseline}: fix the tests first (every mutant would look caught)",
                      file=sys.stderr)
                return 1
        for i, m in enumerate(mutants, 1):
            print(f"[{i}/{len(mutants)}] {m.name} ...", end=" ", flush=True)
            run_mutant(tmp, m, args.timeout, args.per_test_timeout)
            print(f"{m.status} ({m.seconds:.0f} s) {m.caught_by or m.detail}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: the working tree was never touched", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"temporary tree kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    caught = sum(m.status == "caught" for m in mutants)
    summary = {"total": len(mutants), "caught": caught,
               "survived": [m.name for m in mutants if m.status == "survived"],
               "stale": [m.name for m in mutants if m.status == "stale"], "baseline": baseline,
               "seconds": round(time.monotonic() - started, 1),
               "mutants": [{"name": m.name, "file": m.file, "breaks": m.breaks, "status": m.status,
                            "caught_by": m.caught_by, "seconds": m.seconds, "tests": m.tests,
                            **({"detail": m.detail} if m.detail else {})} for m in mutants]}
    print("\n" + table(mutants))
    print(f"\ncaught {caught}/{len(mutants)}")
    print(json.dumps({k: v for k, v in summary.items() if k != "mutants"}))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if caught == len(mutants) else 1


if __name__ == "__main__":
    sys.exit(main())
