"""Find the ultrasound image area on a cart screen and propose the testis ROI (classic OpenCV).

A cart screen is mostly dark background with UI text, a depth scale and caliper marks around one large
speckled image field (sector or linear). The field is the largest region that stays bright after a
blur + opening large enough to erase text and tick marks. Inside it, the testis is an ellipse with a
bright rim (tunica albuginea) around mid-grey parenchyma: smoothing removes speckle, the rim is the
brightest ring, and an ellipse fitted to the strongest closed ring gives the ROI. The user can always
drag the ROI on the page; the ROI actually used is stored with the exam.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Box = tuple[int, int, int, int]
RotatedRect = tuple[Sequence[float], Sequence[float], float]  # cv2.fitEllipse: (centre, axes, angle)


def _gray(image_rgb: np.ndarray) -> np.ndarray:
    """Both functions take RGB or an already-gray frame (the pipeline converts once and passes gray)."""
    return cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY) if image_rgb.ndim == 3 else image_rgb


def _percentile_u8(values: np.ndarray, q: float) -> float:
    """np.percentile(values, q) (linear interpolation) of uint8 values from a 256-bin histogram: the two
    order statistics around the rank, no sort (~10× faster than np.percentile on a frame)."""
    counts = np.bincount(values.ravel(), minlength=256)
    cum = np.cumsum(counts)
    n = int(cum[-1])
    rank = q / 100.0 * (n - 1)
    lo = int(np.floor(rank))
    v_lo = int(np.searchsorted(cum, lo, side="right"))
    v_hi = int(np.searchsorted(cum, min(lo + 1, n - 1), side="right"))
    return v_lo + (v_hi - v_lo) * (rank - lo)


def find_image_area(image_rgb: np.ndarray) -> Box:
    """Bounding box (x, y, w, h) of the ultrasound field; the whole frame when nothing stands out."""
    gray = _gray(image_rgb)
    H, W = gray.shape
    scale = 400.0 / max(H, W) if max(H, W) > 400 else 1.0
    small = cv2.resize(gray, (round(W * scale), round(H * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else gray
    blur = cv2.blur(small, (7, 7))
    mask: np.ndarray = (blur > max(10, _percentile_u8(blur, 5) + 6)).astype(np.uint8)
    k = max(5, round(min(small.shape) / 25)) | 1  # wider than text strokes and scale ticks
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return (0, 0, W, H)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = stats[best]
    if area < 0.05 * mask.size:
        return (0, 0, W, H)
    x0, y0 = int(np.floor(x / scale)), int(np.floor(y / scale))
    x1, y1 = min(W, int(np.ceil((x + w) / scale))), min(H, int(np.ceil((y + h) / scale)))
    return _trim_to_field(gray, (x0, y0, x1 - x0, y1 - y0))


def _field_lines(profile_on: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """Which lines (columns or rows) of the coarse box are B-mode image: mostly above the background
    level AND speckled. A depth ruler or text column is mostly background; the frame's drawn border is
    bright but flat (its mean step along the line a fraction of the speckle's, whatever lies past its ends)."""
    on = profile_on >= 0.5
    if not on.any():
        return on
    return on & (texture >= 0.4 * float(np.median(texture[on])))


def _first_run(keep: np.ndarray, run: int = 3) -> int | None:
    """Index of the first of `run` consecutive True values (None when there is none)."""
    if len(keep) < run:
        return None
    runs = np.convolve(keep.astype(np.int32), np.ones(run, np.int32), mode="valid")
    hits = np.flatnonzero(runs == run)
    return int(hits[0]) if len(hits) else None


def _trim_to_field(gray: np.ndarray, box: Box) -> Box:
    """Shrink the coarse box (found at ≤400 px after blur and closing, which glue a nearby depth ruler,
    focus marker or the field's border line onto the field) to the full-resolution lines that are image:
    each side moves inward to the first run of lines that are mostly bright and speckled. Issue 12: the
    automatic ROI must never reach the ruler, text or margins."""
    x, y, w, h = box
    sub = gray[y:y + h, x:x + w]
    level = max(10.0, _percentile_u8(sub[::4, ::4], 5) + 6)
    cols = sub[::4].astype(np.float32)      # every 4th row: enough rows for a column's statistics
    rows = sub[:, ::4].astype(np.float32)
    keep_c = _field_lines((cols > level).mean(axis=0), np.abs(np.diff(cols, axis=0)).mean(axis=0))
    keep_r = _field_lines((rows > level).mean(axis=1), np.abs(np.diff(rows, axis=1)).mean(axis=1))
    left, right = _first_run(keep_c), _first_run(keep_c[::-1])
    top, bottom = _first_run(keep_r), _first_run(keep_r[::-1])
    if left is None or right is None or top is None or bottom is None \
            or left + right >= w - 32 or top + bottom >= h - 32:
        return box  # nothing clear to trim to: keep the coarse box
    return (x + left, y + top, w - left - right, h - top - bottom)


def propose_roi(image_rgb: np.ndarray, area: Box | None = None, margin: float = 0.10) -> Box:
    """Testis ROI (x, y, w, h) inside `area`: bounding box of the fitted bright-rimmed ellipse plus a
    small margin, cut to the area; falls back to the central 60% of the image area."""
    area = area or find_image_area(image_rgb)
    ax, ay, aw, ah = area
    gray = _gray(image_rgb)[ay:ay + ah, ax:ax + aw]
    fallback = _clip((ax + int(aw * 0.2), ay + int(ah * 0.2), int(aw * 0.6), int(ah * 0.6)), image_rgb.shape)
    if aw < 32 or ah < 32:
        return fallback
    scale = 256.0 / max(aw, ah)
    small = cv2.resize(gray, (max(1, round(aw * scale)), max(1, round(ah * scale))), interpolation=cv2.INTER_AREA)
    smooth = cv2.GaussianBlur(small, (0, 0), 1.5)
    best = _best_ellipse(smooth)
    if best is None:
        return fallback
    (cx, cy), (d1, d2), angle = best
    # axis-aligned bounding box of the rotated ellipse
    a, b, t = d1 / 2.0, d2 / 2.0, np.deg2rad(angle)
    half_w = np.sqrt((a * np.cos(t)) ** 2 + (b * np.sin(t)) ** 2)
    half_h = np.sqrt((a * np.sin(t)) ** 2 + (b * np.cos(t)) ** 2)
    half_w, half_h = half_w * (1 + margin), half_h * (1 + margin)
    x0 = ax + (cx - half_w) / scale
    y0 = ay + (cy - half_h) / scale
    box = (round(x0), round(y0), round(2 * half_w / scale), round(2 * half_h / scale))
    return _clip(_intersect(box, area), image_rgb.shape)


def _intersect(box: Box, area: Box) -> Box:
    """`box` cut to `area`: a testis running off the field's edge is cropped there, never onto the margin."""
    x0, y0 = max(box[0], area[0]), max(box[1], area[1])
    x1, y1 = min(box[0] + box[2], area[0] + area[2]), min(box[1] + box[3], area[1] + area[3])
    return (x0, y0, max(2, x1 - x0), max(2, y1 - y0))


def _plausible(ellipse, w: int, h: int) -> bool:
    (cx, cy), (d1, d2), _ = ellipse
    return 0 <= cx < w and 0 <= cy < h and min(d1, d2) >= 0.1 * min(w, h) and max(d1, d2) <= 1.3 * max(w, h)


def _best_ellipse(smooth: np.ndarray):
    """The rim is a thin bright ridge: a white top-hat keeps ridges narrower than the kernel (not broad
    bright tissue), the top 7% of it inside the field are rim candidates. Each large candidate component
    seeds an ellipse, refined on all candidate pixels within a band around it (the rim is broken by
    speckle and shadows); the winner covers most of its own perimeter and is large."""
    h, w = smooth.shape
    field = smooth > 8
    if field.sum() < 100:
        return None
    tophat = cv2.morphologyEx(smooth, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11)))
    level = _percentile_u8(tophat[field], 93)
    rim: np.ndarray = ((tophat >= level) & field).astype(np.uint8)
    rim = cv2.morphologyEx(rim, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    near_rim = cv2.dilate(rim, np.ones((5, 5), np.uint8)) > 0
    n, labels, stats, _ = cv2.connectedComponentsWithStats(rim, connectivity=8)
    best, best_score = None, 0.0
    ellipse: RotatedRect | None  # None once refinement gives up on a candidate
    for i in (np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:12] + 1):
        if stats[i, cv2.CC_STAT_AREA] < 30:
            continue
        x0, y0, bw, bh = stats[i, :4]  # the component's own box: nonzero on a window, not the frame
        ys, xs = np.nonzero(labels[y0:y0 + bh, x0:x0 + bw] == i)
        ellipse = cv2.fitEllipse(np.column_stack((xs + x0, ys + y0)).astype(np.float32))
        for _ in range(3):  # refine on every rim pixel near the current ellipse
            if not _plausible(ellipse, w, h):
                ellipse = None
                break
            band = np.zeros(rim.shape, np.uint8)
            cv2.ellipse(band, ellipse, 1, 5)
            pts = _band_points(band, rim)
            if len(pts) < 6:
                ellipse = None
                break
            ellipse = cv2.fitEllipse(pts)
        if ellipse is None or not _plausible(ellipse, w, h):
            continue
        (cx, cy), (d1, d2), angle = ellipse
        poly = np.asarray(cv2.ellipse2Poly((int(cx), int(cy)), (int(d1 / 2), int(d2 / 2)), int(angle), 0, 360, 3))
        xs, ys = poly[:, 0], poly[:, 1]
        keep = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        xs, ys = xs[keep], ys[keep]
        keep = field[ys, xs]
        if keep.sum() < 20:
            continue
        coverage = float(near_rim[ys[keep], xs[keep]].mean())
        score = coverage ** 2 * np.sqrt(d1 * d2)
        if score > best_score:
            best, best_score = ellipse, score
    return best


def _band_points(band: np.ndarray, rim: np.ndarray) -> np.ndarray:
    """(x, y) float32 of rim pixels under the drawn band, searched only inside the band's bounding box."""
    bx, by, bw, bh = cv2.boundingRect(band)
    ys, xs = np.nonzero(band[by:by + bh, bx:bx + bw] & rim[by:by + bh, bx:bx + bw])
    return np.column_stack((xs + bx, ys + by)).astype(np.float32)


def _clip(box: Box, shape) -> Box:
    H, W = shape[:2]
    x, y, w, h = (int(v) for v in box)
    x, y = max(0, min(x, W - 2)), max(0, min(y, H - 2))
    w, h = max(2, min(w, W - x)), max(2, min(h, H - y))
    return (x, y, w, h)


def parse_roi(text: str, shape) -> Box:
    """'x,y,w,h' from a form field -> a validated box; ValueError names what is wrong."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 4:
        raise ValueError(f"roi must be 'x,y,w,h' (4 integers), got {text!r}")
    try:
        x, y, w, h = (int(round(float(p))) for p in parts)
    except ValueError:
        raise ValueError(f"roi must be 'x,y,w,h' (4 integers), got {text!r}") from None
    H, W = shape[:2]
    problem = box_problem((x, y, w, h), W, H, min_side=8)
    if problem:
        raise ValueError(problem)
    return (x, y, w, h)


def box_problem(box, width: int, height: int, min_side: int = 1) -> str | None:
    """Why `box` (x, y, w, h) is not a usable ROI of a width×height image, or None. Shared by the form
    parser (8 px minimum) and the store, which derives the ROI image from the stored frame later."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box)):
        return f"roi must be 4 integers [x, y, w, h], got {box!r}"
    x, y, w, h = (int(v) for v in box)
    if w < min_side or h < min_side:
        return f"roi {x},{y},{w},{h} is too small (at least {min_side}×{min_side} pixels)"
    if x < 0 or y < 0 or x + w > width or y + h > height:
        return f"roi {x},{y},{w},{h} lies outside the {width}×{height} image"
    return None


def iou(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0
