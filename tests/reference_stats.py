"""Independent, slow reference for the ROC statistics: DeLong by comparing every case with every control.

DeLong, DeLong & Clarke-Pearson (1988): ψ(x, y) = 1 if x > y, ½ if x = y, 0 otherwise, over all pairs
(case score x, control score y). converters.roc computes the same from midranks in O(n log n); this
O(m·n) loop is written from the paper's definitions, nothing shared.
"""

from __future__ import annotations

import math


def _psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def placements(y, score) -> tuple[float, list[float], list[float]]:
    cases = [float(s) for s, t in zip(score, y, strict=True) if t == 1]
    controls = [float(s) for s, t in zip(score, y, strict=True) if t == 0]
    v10 = [sum(_psi(x, c) for c in controls) / len(controls) for x in cases]
    v01 = [sum(_psi(x, c) for x in cases) / len(cases) for c in controls]
    auc = sum(v10) / len(v10)
    return auc, v10, v01


def _cov(a: list[float], b: list[float], mean_a: float, mean_b: float) -> float:
    return sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b, strict=True)) / (len(a) - 1)


def delong(y, score) -> dict:
    """AUC and its DeLong standard error."""
    auc, v10, v01 = placements(y, score)
    m, n = len(v10), len(v01)
    var = _cov(v10, v10, auc, auc) / m + _cov(v01, v01, auc, auc) / n
    return {"auc": auc, "se": math.sqrt(var)}


def delong_paired(y, score1, score2) -> dict:
    """Difference of two correlated AUCs, its DeLong variance and z."""
    a1, v10a, v01a = placements(y, score1)
    a2, v10b, v01b = placements(y, score2)
    m, n = len(v10a), len(v01a)
    var = ((_cov(v10a, v10a, a1, a1) + _cov(v10b, v10b, a2, a2) - 2 * _cov(v10a, v10b, a1, a2)) / m
           + (_cov(v01a, v01a, a1, a1) + _cov(v01b, v01b, a2, a2) - 2 * _cov(v01a, v01b, a1, a2)) / n)
    diff = a1 - a2
    return {"difference": diff, "var": var, "z": diff / math.sqrt(var) if var > 0 else float("nan")}


def youden(y, score) -> dict:
    """Best sensitivity + specificity − 1 over every cut between two distinct scores (positive = score ≥ cut),
    ties to the lowest cut; the cut is the midpoint, as pROC reports it."""
    distinct = sorted(set(float(s) for s in score))
    cuts = [-math.inf] + [(a + b) / 2 for a, b in zip(distinct[:-1], distinct[1:], strict=True)] + [math.inf]
    n_pos = sum(1 for t in y if t == 1)
    n_neg = len(y) - n_pos
    best = None
    for cut in cuts:
        sens = sum(1 for s, t in zip(score, y, strict=True) if t == 1 and s >= cut) / n_pos
        spec = sum(1 for s, t in zip(score, y, strict=True) if t == 0 and s < cut) / n_neg
        j = sens + spec - 1
        if best is None or j > best["youden_j"] + 1e-12:
            best = {"threshold": cut, "youden_j": j, "sensitivity": sens, "specificity": spec}
    return best
