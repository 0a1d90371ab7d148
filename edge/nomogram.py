"""The nomogram on the device: RUN/nomogram.json (docs/CONTRACTS.md) → probability, label, points, SVG.

numpy only (no matplotlib, no TensorFlow): the daemon calls `Nomogram.predict` for each exam and
`Nomogram.render_svg` for the page. The host (converters/nomogram.py) builds the dict with
`points_scaling` and draws its PNG/SVG from `Nomogram.layout`, so both sides share one geometry.

Linear predictor = intercept + Σ coef·transform(value); probability = 1 / (1 + exp(−lp)).
Points follow rms::nomogram: the predictor whose axis spans the widest range of lp gets 0–100 points;
every other axis uses the same points-per-unit-lp scale.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsFloat, SupportsIndex
from xml.sax.saxutils import escape

import numpy as np

from .errors import EdgeError
from .wording import pair_texts

SCHEMA = "noa-edge.nomogram/1"
TRANSFORMS = ("identity", "logit", "log")
PROBABILITY_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
# which probability ticks survive first when an axis is short
PROBABILITY_TICK_PRIORITY = (0.5, 0.1, 0.9, 0.01, 0.99, 0.05, 0.95, 0.2, 0.8, 0.3, 0.7, 0.02, 0.98, 0.4, 0.6)
MIN_TICK_GAP = 4.0  # percent of the axis width between two labelled ticks


class NomogramError(EdgeError, ValueError):
    """A nomogram file that breaks the contract, or a patient value the nomogram must not score."""


def transform(kind: str, x):
    x = np.asarray(x, dtype=float)
    if kind == "identity":
        return x
    if kind == "log":
        return np.log(x)
    if kind == "logit":
        return np.log(x / (1 - x))
    raise NomogramError(f"unknown transform '{kind}' (expected one of {TRANSFORMS})")


def inverse_transform(kind: str, t):
    t = np.asarray(t, dtype=float)
    return {"identity": lambda: t, "log": lambda: np.exp(t), "logit": lambda: 1 / (1 + np.exp(-t))}[kind]()


@dataclass(frozen=True)
class Predictor:
    name: str
    source: str          # the input key the device supplies (dl_probability, fsh, volume_ml, edv_cm_s, ...)
    transform: str
    coef: float
    label: str
    unit: str
    range: tuple[float, float]   # plausible input range enforced on the device


@dataclass(frozen=True)
class Axis:
    name: str
    min: float
    max: float
    points_min: float    # points at value = min
    points_max: float    # points at value = max


def points_scaling(predictors: list[dict], axis_limits: dict[str, tuple[float, float]]) -> dict:
    """rms::nomogram scaling: 100 points = the largest lp range any predictor spans over its axis.

    predictors: dicts with name, transform, coef; axis_limits: name -> (min, max) in raw units.
    Returns the contract's "points" dict."""
    spans = {}
    for p in predictors:
        lo, hi = axis_limits[p["name"]]
        if not hi > lo:
            raise NomogramError(f"axis of '{p['name']}' is empty ({lo} to {hi})")
        t_lo, t_hi = (float(v) for v in transform(p["transform"], [lo, hi]))
        spans[p["name"]] = abs(p["coef"]) * abs(t_hi - t_lo)
    widest = max(spans.values())
    if not widest > 0:
        raise NomogramError("every coefficient is zero: nothing to draw")
    scale = 100.0 / widest
    axes = []
    for p in predictors:
        lo, hi = axis_limits[p["name"]]
        span = scale * spans[p["name"]]
        up = p["coef"] >= 0
        axes.append({"name": p["name"], "min": float(lo), "max": float(hi),
                     "points_min": 0.0 if up else span, "points_max": span if up else 0.0})
    return {"scale_per_unit_lp": scale, "axes": axes}


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round-number ticks (1, 2, 2.5, 5 × 10^k) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]
    return [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]


class Nomogram:
    """A validated nomogram.json. Build with `Nomogram(spec_dict)` or `Nomogram.load(path)`."""

    def __init__(self, spec: Mapping, positive_label: str = "NOA", negative_label: str = "OA"):
        self.spec = dict(spec)
        self.positive_label, self.negative_label = positive_label, negative_label
        where = "nomogram"
        if self.spec.get("schema") != SCHEMA:
            raise NomogramError(f"{where}: schema is {self.spec.get('schema')!r}, expected {SCHEMA!r}")
        try:
            self.intercept = float(self.spec["intercept"])
            self.threshold = float(self.spec["threshold"])
            self.threshold_method = str(self.spec.get("threshold_method", ""))
            self.placeholder = bool(self.spec.get("placeholder", False))
            self.predictors = []
            for i, p in enumerate(self.spec["predictors"]):
                lo, hi = (float(v) for v in p["range"])
                pred = Predictor(str(p["name"]), str(p["source"]), str(p["transform"]), float(p["coef"]),
                                 str(p.get("label", p["name"])), str(p.get("unit", "")), (lo, hi))
                if pred.transform not in TRANSFORMS:
                    raise NomogramError(f"{where}: predictors[{i}] ('{pred.name}') has transform "
                                        f"'{pred.transform}', expected one of {TRANSFORMS}")
                if not hi > lo:
                    raise NomogramError(f"{where}: predictors[{i}] ('{pred.name}') range {lo}..{hi} is empty")
                if not math.isfinite(pred.coef):
                    raise NomogramError(f"{where}: predictors[{i}] ('{pred.name}') coefficient is not finite")
                self.predictors.append(pred)
            points = self.spec["points"]
            self.scale = float(points["scale_per_unit_lp"])
            axes = {a["name"]: Axis(str(a["name"]), float(a["min"]), float(a["max"]),
                                    float(a["points_min"]), float(a["points_max"])) for a in points["axes"]}
        except KeyError as exc:
            raise NomogramError(f"{where}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, NomogramError):
                raise
            raise NomogramError(f"{where}: malformed field ({exc})") from None
        if not (0 < self.threshold < 1):
            raise NomogramError(f"{where}: threshold {self.threshold} is not a probability in (0, 1)")
        if not self.scale > 0:
            raise NomogramError(f"{where}: points.scale_per_unit_lp must be > 0")
        self.axes = []
        for p in self.predictors:
            if p.name not in axes:
                raise NomogramError(f"{where}: points.axes has no axis for predictor '{p.name}'")
            a = axes[p.name]
            t_lo, t_hi = (float(v) for v in transform(p.transform, [a.min, a.max]))
            expected = self.scale * p.coef * (t_hi - t_lo)
            if not math.isclose(a.points_max - a.points_min, expected, rel_tol=1e-6, abs_tol=1e-6):
                raise NomogramError(f"{where}: axis '{p.name}' spans {a.points_max - a.points_min:.4g} points but "
                                    f"coef × scale gives {expected:.4g}: points scaling is inconsistent")
            self.axes.append(a)
        # lp when every predictor sits at its 0-points value: total points → lp = lp0 + total / scale
        self.lp_at_zero_points = self.intercept + sum(
            p.coef * float(transform(p.transform, a.min)) - a.points_min / self.scale
            for p, a in zip(self.predictors, self.axes, strict=True))

    @classmethod
    def load(cls, path: str | Path, **kw) -> Nomogram:
        path = Path(path)
        try:
            spec = json.loads(path.read_text())
        except FileNotFoundError:
            raise NomogramError(f"{path}: no such file") from None
        except json.JSONDecodeError as exc:
            raise NomogramError(f"{path}: not valid JSON ({exc})") from None
        return cls(spec, **kw)

    @property
    def sources(self) -> list[str]:
        return [p.source for p in self.predictors]

    # ----------------------------------------------------------------------------- scoring
    def check_inputs(self, values: Mapping[str, object]) -> tuple[dict[str, float], list[str]]:
        """Inputs keyed by predictor source → floats. Raises NomogramError listing every bad field.

        A probability-type input (logit transform) outside its range but inside [0, 1] is clipped to the
        range (a saturated model output is not a user error) and reported in the returned notes."""
        clean, problems, notes = {}, [], []
        for p in self.predictors:
            lo, hi = p.range
            unit = f" {p.unit}" if p.unit else ""
            raw = values.get(p.source)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                problems.append(f"{p.label} ({p.source}) is missing")
                continue
            try:
                if not isinstance(raw, (str, bytes, bytearray, memoryview, SupportsFloat, SupportsIndex)):
                    raise TypeError  # what float() would raise: reported as not a number below
                x = float(raw)
            except (TypeError, ValueError):
                problems.append(f"{p.label} ({p.source}) = {raw!r} is not a number")
                continue
            if not math.isfinite(x):
                problems.append(f"{p.label} ({p.source}) = {raw!r} is not a finite number")
                continue
            if p.transform == "logit" and 0 <= x <= 1 and not lo <= x <= hi:
                notes.append(f"{p.label} {x:g} clipped to {min(max(x, lo), hi):g}")
                x = min(max(x, lo), hi)
            if not lo <= x <= hi:
                problems.append(f"{p.label} ({p.source}) = {x:g}{unit} is outside the plausible range "
                                f"{lo:g}–{hi:g}{unit}")
                continue
            clean[p.source] = x
        if problems:
            raise NomogramError("; ".join(problems))
        return clean, notes

    def points_of(self, predictor: Predictor, axis: Axis, x: float) -> float:
        t = float(transform(predictor.transform, x))
        t_lo = float(transform(predictor.transform, axis.min))
        return axis.points_min + self.scale * predictor.coef * (t - t_lo)

    def predict(self, values: Mapping[str, object]) -> dict:
        """Score one testis image: values keyed by source, e.g. {"dl_probability": 0.83, "fsh": 14.2,
        "volume_ml": 9.1, "edv_cm_s": 2.4}. Returns lp, probability, label at the threshold, points."""
        clean, notes = self.check_inputs(values)
        lp = self.intercept
        points = {}
        for p, a in zip(self.predictors, self.axes, strict=True):
            lp += p.coef * float(transform(p.transform, clean[p.source]))
            points[p.name] = self.points_of(p, a, clean[p.source])
        prob = float(1 / (1 + math.exp(-lp))) if lp > -700 else 0.0
        return {"lp": lp, "probability": prob, "threshold": self.threshold,
                "label": self.positive_label if prob >= self.threshold else self.negative_label,
                "points": points, "total_points": float(sum(points.values())), "inputs": clean,
                "notes": notes}

    def probability_from_points(self, total_points: float) -> float:
        return float(1 / (1 + math.exp(-(self.lp_at_zero_points + total_points / self.scale))))

    # ----------------------------------------------------------------------------- drawing
    def layout(self) -> dict:
        """Geometry shared by the host figure and the device SVG: every row's ticks in points.

        rows: [{"label", "kind": points|predictor|total|probability, "ticks": [(points, text)], "max_points"}]"""
        rows: list[dict[str, Any]] = [
            {"label": "Points", "kind": "points", "ticks": [(float(v), f"{v:g}") for v in range(0, 101, 10)]}]
        total_max = 0.0
        for p, a in zip(self.predictors, self.axes, strict=True):
            if p.transform == "logit":
                values = [v for v in PROBABILITY_TICKS if a.min - 1e-12 <= v <= a.max + 1e-12]
            elif p.transform == "log":
                values = [m * 10 ** k for k in range(-3, 5) for m in (1, 2, 5) if a.min <= m * 10 ** k <= a.max]
            else:
                values = nice_ticks(a.min, a.max, 7)
            ticks = _thin([(self.points_of(p, a, v), f"{v:g}") for v in values], 100.0, p.transform == "logit")
            unit = f" ({p.unit})" if p.unit else ""
            rows.append({"label": f"{p.label}{unit}", "kind": "predictor", "name": p.name, "source": p.source,
                         "ticks": ticks, "span": (min(a.points_min, a.points_max), max(a.points_min, a.points_max))})
            total_max += max(a.points_min, a.points_max)
        total_ticks = [(float(v), f"{v:g}") for v in nice_ticks(0.0, total_max, 8)]
        rows.append({"label": "Total points", "kind": "total", "ticks": total_ticks, "max_points": total_max,
                     "span": (0.0, total_max)})
        prob_ticks = []
        for pr in PROBABILITY_TICKS:
            tp = (math.log(pr / (1 - pr)) - self.lp_at_zero_points) * self.scale
            if 0 <= tp <= total_max:
                prob_ticks.append((tp, f"{pr:g}"))
        prob_ticks = _thin(prob_ticks, total_max or 1.0, True)
        rows.append({"label": f"Probability of {self.positive_label}", "kind": "probability",
                     "ticks": prob_ticks, "max_points": total_max})
        return {"rows": rows, "total_max": total_max}

    def render_svg(self, values: Mapping[str, object] | None = None, width: int = 760) -> str:
        """The nomogram as a standalone SVG string; with `values`, the patient's position is marked in red."""
        lay = self.layout()
        result = self.predict(values) if values is not None else None
        label_w, pad, row_h = 190, 24, 46
        axis_w = width - label_w - pad
        height = pad + row_h * len(lay["rows"]) + (22 if result else 0) + 8
        total_max = lay["total_max"] or 1.0

        def x_of(points, kind):
            scale_max = total_max if kind in ("total", "probability") else 100.0
            return label_w + axis_w * points / scale_max

        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
               f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="11">',
               f'<rect width="{width}" height="{height}" fill="white"/>']
        y_of = {}
        for i, row in enumerate(lay["rows"]):
            y = pad + row_h * i + 18
            y_of[row.get("name", row["kind"])] = y
            kind = row["kind"]
            xs = [x_of(tp, kind) for tp, _ in row["ticks"]]
            if "span" in row:
                x0, x1 = x_of(row["span"][0], kind), x_of(row["span"][1], kind)
            elif xs:
                x0, x1 = min(xs), max(xs)
            else:
                x0 = x1 = label_w
            out.append(f'<text x="{label_w - 10}" y="{y + 4}" text-anchor="end" font-weight="bold">'
                       f'{escape(row["label"])}</text>')
            out.append(f'<line x1="{x0:.2f}" y1="{y}" x2="{x1:.2f}" y2="{y}" stroke="black" stroke-width="1"/>')
            for (_, text), x in zip(row["ticks"], xs, strict=True):
                out.append(f'<line x1="{x:.2f}" y1="{y}" x2="{x:.2f}" y2="{y - 5}" stroke="black"/>'
                           f'<text x="{x:.2f}" y="{y - 8}" text-anchor="middle">{escape(text)}</text>')
        if result:
            mark = "#c0392b"
            y_points = y_of["points"]
            for p in self.predictors:
                pts = result["points"][p.name]
                x, y = x_of(pts, "predictor"), y_of[p.name]
                out.append(f'<line x1="{x:.2f}" y1="{y}" x2="{x:.2f}" y2="{y_points}" stroke="{mark}" '
                           f'stroke-dasharray="3,3"/><circle cx="{x:.2f}" cy="{y}" r="4" fill="{mark}"/>'
                           f'<text x="{x + 6:.2f}" y="{y + 14}" fill="{mark}">{pts:.0f} pts</text>')
            xt = x_of(min(max(result["total_points"], 0.0), total_max), "total")
            y_t, y_p = y_of["total"], y_of["probability"]
            out.append(f'<line x1="{xt:.2f}" y1="{y_t}" x2="{xt:.2f}" y2="{y_p}" stroke="{mark}" '
                       f'stroke-dasharray="3,3"/>'
                       f'<circle cx="{xt:.2f}" cy="{y_t}" r="4" fill="{mark}"/>'
                       f'<circle cx="{xt:.2f}" cy="{y_p}" r="4" fill="{mark}"/>')
            pr_text, thr_text = pair_texts(result["probability"], self.threshold)  # "> 99 %", never "1.000"
            summary = (f'Total {result["total_points"]:.0f} points → probability {pr_text} '
                       f'→ {result["label"]} (threshold {thr_text})')
            out.append(f'<text x="{label_w}" y="{height - 10}" fill="{mark}" font-weight="bold">'
                       f'{escape(summary)}</text>')
        out.append("</svg>")
        return "\n".join(out)


def _thin(ticks: list[tuple[float, str]], axis_max: float, probability: bool) -> list[tuple[float, str]]:
    """Drop ticks closer than MIN_TICK_GAP % of the axis to one already kept (probability ticks keep
    0.5, 0.1, 0.9, ... first; other axes keep the given order, ends first)."""
    if probability:
        rank = {f"{v:g}": i for i, v in enumerate(PROBABILITY_TICK_PRIORITY)}
        order = sorted(ticks, key=lambda t: rank.get(t[1], len(rank)))
    else:
        order = ticks[:1] + ticks[-1:] + ticks[1:-1]
    kept: list[tuple[float, str]] = []
    gap = MIN_TICK_GAP * axis_max / 100.0
    for t in order:
        if all(abs(t[0] - k[0]) >= gap for k in kept):
            kept.append(t)
    return sorted(kept)


def load_nomogram(source: str | Path | Mapping, **kw) -> Nomogram:
    """Path to nomogram.json, a bundle manifest dict with a "nomogram" key, or the nomogram dict itself."""
    if isinstance(source, Mapping):
        spec = source.get("nomogram", source) if "schema" not in source else source
        return Nomogram(spec, **kw)
    return Nomogram.load(source, **kw)
