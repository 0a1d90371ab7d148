"""B-mode ultrasound physics and the cart screen, for the phantom cohort and its scan video.

One cart + transducer (`Scanner`) images a testis (`Scene`) the physical way: scatterers -> RF
point-spread function -> Hilbert envelope -> TGC -> log compression (`acquire`), then scan conversion
onto a whole cart screen with its text overlays, depth scale and calipers (`compose_screen`), which
also returns the testis ROI in screen pixels. The constants are documented in docs/PHANTOM.md.
Nothing here knows about patients: converters/phantom.py maps a clinical row to a `Scene`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SOUND_SPEED_MM_US = 1.54
ATTENUATION_DB_CM_MHZ = 0.5  # soft tissue, one way


@dataclass(frozen=True)
class Scanner:
    """One cart + transducer: acquisition physics and screen layout."""

    name: str
    probe: str
    f0_mhz: float            # transducer centre frequency
    fractional_bandwidth: float  # -6 dB bandwidth / f0 (sets the axial pulse length)
    f_number: float          # lateral beam width ~ lambda * F#
    width_mm: float
    depth_mm: float
    gain_db: float           # display gain offset
    dynamic_range_db: float
    tgc_error_db_per_cm: float  # residual after time-gain compensation (0 = perfect)
    noise_db: float          # electronic noise floor relative to unit parenchyma at the skin
    gamma: float             # grey map
    tint: tuple[float, float, float]  # RGB multipliers of the grey map
    screen: tuple[int, int] = (800, 600)
    origin: tuple[int, int] = (110, 80)  # top-left pixel of the image field
    px_per_mm: float = 10.0
    layout: str = "top"      # where the text overlays go ("top" | "left")
    line_pitch_mm: float = 0.15


SCANNERS = {
    "development": Scanner(name="Site A", probe="L12-5", f0_mhz=10.0, fractional_bandwidth=0.65,
                           f_number=2.5, width_mm=62.0, depth_mm=42.0, gain_db=0.0,
                           dynamic_range_db=60.0, tgc_error_db_per_cm=0.0, noise_db=-62.0, gamma=1.0,
                           tint=(1.0, 1.0, 1.0), origin=(90, 80)),
    # The prospective external site: other vendor, lower-frequency probe (coarser speckle), brighter
    # gain, narrower dynamic range, imperfect TGC, a warm grey map and another screen layout.
    "external": Scanner(name="Site B", probe="L9-4", f0_mhz=7.5, fractional_bandwidth=0.55,
                        f_number=2.8, width_mm=62.0, depth_mm=45.0, gain_db=2.0, dynamic_range_db=50.0,
                        tgc_error_db_per_cm=-0.8, noise_db=-55.0, gamma=1.15, tint=(1.0, 0.96, 0.88),
                        origin=(190, 70), px_per_mm=9.0, layout="left"),
}


def _fft_friendly(n: int) -> int:
    """Smallest even m >= n with no prime factor above 5 (pocketfft is ~3x slower on odd primes)."""
    m = n + (n % 2)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 2


def _grid(scanner: Scanner, width_mm: float | None = None, depth_mm: float | None = None):
    """Beam grid: z (axial RF samples, mm) and x (scan lines, mm). The axial Nyquist frequency sits
    above the pulse band (pulse-echo wavelength lambda/2, Gaussian spectrum) so the RF is not aliased."""
    width_mm = scanner.width_mm if width_mm is None else width_mm
    depth_mm = scanner.depth_mm if depth_mm is None else depth_mm
    k0 = 2.0 * scanner.f0_mhz / SOUND_SPEED_MM_US  # cycles/mm along depth
    dz = 1.0 / (2.0 * k0 * (1.0 + 1.4 * scanner.fractional_bandwidth))
    nz = _fft_friendly(int(math.ceil(depth_mm / dz)))  # even (half-rate envelope), 5-smooth (fast FFT)
    nx = int(round(width_mm / scanner.line_pitch_mm))
    z = (np.arange(nz, dtype=np.float32) + 0.5) * dz
    x = (np.arange(nx, dtype=np.float32) + 0.5) * scanner.line_pitch_mm
    return z, x, dz


def _lateral_beam(field: np.ndarray, scanner: Scanner) -> np.ndarray:
    """Lateral part of the PSF: Gaussian beam profile, FWHM = lambda * F-number."""
    import cv2

    lam = SOUND_SPEED_MM_US / scanner.f0_mhz
    sigma_lat = lam * scanner.f_number / 2.355 / scanner.line_pitch_mm  # in lines
    k = int(2 * math.ceil(3 * sigma_lat) + 1)
    return cv2.GaussianBlur(field, (k, 1), sigmaX=sigma_lat, sigmaY=1e-6, borderType=cv2.BORDER_REFLECT)


def _rf_spectrum(field: np.ndarray, scanner: Scanner, dz: float) -> np.ndarray:
    """One-sided axial spectrum of the RF: field spectrum x Gaussian pulse spectrum centred on the
    pulse-echo frequency 2·f0/c (= convolution with a Gaussian-modulated cosine)."""
    nz = field.shape[0]
    k0 = 2.0 * scanner.f0_mhz / SOUND_SPEED_MM_US
    sigma_k = k0 * scanner.fractional_bandwidth / 2.355
    kz = np.fft.rfftfreq(nz, d=dz).astype(np.float32)
    pulse = np.exp(-0.5 * ((kz - k0) / sigma_k) ** 2).astype(np.float32)
    spec = np.fft.rfft(field, axis=0)
    spec *= pulse[:, None]
    return spec


def rf_from_scatterers(field: np.ndarray, scanner: Scanner, dz: float) -> np.ndarray:
    """Convolve a scatterer field (axial x lateral) with the separable pulse-echo PSF: Gaussian
    beam profile laterally, Gaussian-modulated cosine axially. Returns the RF lines."""
    spec = _rf_spectrum(_lateral_beam(field, scanner), scanner, dz)
    return np.fft.irfft(spec, n=field.shape[0], axis=0).astype(np.float32)


def hilbert_envelope(rf: np.ndarray) -> np.ndarray:
    """Envelope |analytic signal| along axis 0 (depth), Hilbert transform via FFT."""
    n = rf.shape[0]
    spec = np.fft.fft(rf, axis=0)
    h = np.zeros(n, dtype=np.float32)
    h[0] = 1.0
    if n % 2 == 0:
        h[n // 2] = 1.0
        h[1:n // 2] = 2.0
    else:
        h[1:(n + 1) // 2] = 2.0
    spec *= h[:, None]
    return np.abs(np.fft.ifft(spec, axis=0)).astype(np.float32)


def envelope_from_rf_spectrum(spec: np.ndarray, n: int) -> np.ndarray:
    """The same Hilbert envelope, taken from the RF spectrum at half the axial rate: the analytic
    signal only has positive frequencies, so it is exactly represented by every 2nd sample
    (= hilbert_envelope(rf)[::2], which a test checks). Halves the inverse FFT and all later work."""
    m = n // 2
    half = spec[:m].copy()
    half[1:] *= 2.0
    return (np.abs(np.fft.ifft(half, axis=0)) * (m / n)).astype(np.float32)


_UNIT_RMS: dict[str, float] = {}


def _unit_rms(scanner: Scanner) -> float:
    """RMS envelope of unit-amplitude homogeneous scatterers: the 0 dB reference of the display."""
    if scanner.probe not in _UNIT_RMS:
        z, x, dz = _grid(scanner, width_mm=12.0, depth_mm=12.0)
        rng = np.random.default_rng(12345)
        field_ = rng.standard_normal((len(z), len(x)), dtype=np.float32)
        env = envelope_from_rf_spectrum(_rf_spectrum(_lateral_beam(field_, scanner), scanner, dz), len(z))
        core = env[len(env) // 8: -len(env) // 8]
        _UNIT_RMS[scanner.probe] = float(np.sqrt(np.mean(core.astype(np.float64) ** 2)))
    return _UNIT_RMS[scanner.probe]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Smooth zero-mean unit-ish random field (bicubic upsampling of a coarse grid)."""
    import cv2

    coarse = rng.standard_normal(cells).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


@dataclass
class Scene:
    """A testis in physical coordinates (mm) plus the texture knobs the severity sets."""

    cx: float
    cz: float
    a: float          # semi long axis (mm, along x)
    b: float          # semi AP axis (mm, along z)
    tilt: float       # radians
    echogenicity: float = 1.0        # parenchyma amplitude multiplier
    texture: float = 0.03            # smooth amplitude modulation strength (lobular heterogeneity)
    patches: list = field(default_factory=list)    # (u, v, ru, rv, contrast) in testis-normalised coords
    microliths: list = field(default_factory=list)  # (u, v)
    epididymis_dilated: float = 0.0  # 0 = normal head; 1 = dilated, cystic tubules
    epididymis_pole: int = -1        # -1 left pole, +1 right pole (superior pole on screen)


MAP_DECIMATION = 4  # tissue maps are smooth on the scale of 4 RF samples; evaluated coarse, then upsampled


def _amplitude_map(scene: Scene, z: np.ndarray, x: np.ndarray, rng: np.random.Generator,
                   homogeneous: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scatterer amplitude map (reflectivity x sqrt(scatterer density)) per tissue, and the testis
    mask, on the grid (z, x) in mm."""
    Z = z[:, None]
    X = x[None, :]
    shape = (len(z), len(x))
    c, s_ = math.cos(scene.tilt), math.sin(scene.tilt)
    dx, dzz = X - scene.cx, Z - scene.cz
    u = (c * dx + s_ * dzz) / scene.a   # along the long axis, -1..1 inside
    v = (-s_ * dx + c * dzz) / scene.b  # across (AP), -1..1 inside
    r = np.sqrt(u * u + v * v)
    inside = r < 1.0
    mean_axis = 0.5 * (scene.a + scene.b)
    dist_mm = (r - 1.0) * mean_axis  # ~ distance from the ellipse outline (mm, >0 outside)

    # Scrotal wall: bright skin line, layered wall, then darker loose tissue around the testis.
    amp = np.where(Z < 1.0, np.float32(2.2), np.where(Z < 3.2, np.float32(0.9), np.float32(0.42)))
    amp = amp * np.exp(0.35 * _smooth_noise(rng, shape, (9, 12)))
    # Thin fluid rim (tunica vaginalis): almost no scatterers.
    amp = np.where((dist_mm > 0) & (dist_mm < 0.8), np.float32(0.08), amp)
    parenchyma = np.full(shape, scene.echogenicity, np.float32)
    if not homogeneous:
        parenchyma *= 1.0 + scene.texture * _smooth_noise(rng, shape, (12, 18))
        for (pu, pv, ru, rv, contrast) in scene.patches:
            d2 = ((u - pu) / ru) ** 2 + ((v - pv) / rv) ** 2
            parenchyma *= 1.0 - contrast * np.exp(-d2 * d2)
        # Mediastinum testis: echogenic band along the long axis toward the posterior surface,
        # tapering at both ends.
        taper = np.clip(1.0 - (u / 0.6) ** 2, 0.0, 1.0)
        med = np.exp(-(((v - 0.45) * scene.b / (0.3 + 0.8 * taper)) ** 2)) * taper
        parenchyma = parenchyma + 1.3 * med
    amp = np.where(inside, parenchyma, amp)
    amp = amp + 3.0 * np.exp(-((dist_mm + 0.25) / 0.35) ** 2)  # tunica albuginea

    # Epididymal head beyond the superior pole; dilated in OA (larger, with anechoic tubules).
    if not homogeneous:
        grow = 1.0 + 0.6 * scene.epididymis_dilated
        ex = scene.cx + scene.epididymis_pole * (scene.a * math.cos(scene.tilt) + 3.0 * grow)
        ez = scene.cz - 0.35 * scene.b
        eu, ev = (X - ex) / (5.0 * grow), (Z - ez) / (3.5 * grow)
        epi = ((eu * eu + ev * ev) < 1.0) & ~inside
        epi_amp = 0.8 * (1.0 + 0.2 * _smooth_noise(rng, shape, (20, 28)))
        for _ in range(6 if scene.epididymis_dilated > 0 else 0):
            tu, tv = rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.5)
            tub = ((eu - tu) / 0.22) ** 2 + ((ev - tv) / 0.28) ** 2 < 1.0
            epi_amp = np.where(tub, epi_amp * (1.0 - 0.85 * scene.epididymis_dilated), epi_amp)
        amp = np.where(epi, epi_amp, amp)
    return amp.astype(np.float32), inside


def scatterer_field(scene: Scene, z: np.ndarray, x: np.ndarray, rng: np.random.Generator,
                    homogeneous: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scatterer field on the RF grid: many scatterers per resolution cell sum to a Gaussian with
    the local amplitude (central limit), plus microliths as strong point reflectors."""
    import cv2

    zc = z[MAP_DECIMATION // 2:: MAP_DECIMATION]
    amp_c, inside_c = _amplitude_map(scene, zc, x, rng, homogeneous)
    amp = cv2.resize(amp_c, (len(x), len(z)), interpolation=cv2.INTER_LINEAR)
    inside = cv2.resize(inside_c.astype(np.uint8), (len(x), len(z)), interpolation=cv2.INTER_NEAREST) > 0
    field_ = amp * rng.standard_normal(amp.shape, dtype=np.float32)
    dz, dx = float(z[1] - z[0]), float(x[1] - x[0])
    c, s_ = math.cos(scene.tilt), math.sin(scene.tilt)
    for (mu_, mv) in scene.microliths:
        px = scene.cx + scene.a * mu_ * c - scene.b * mv * s_
        pz = scene.cz + scene.a * mu_ * s_ + scene.b * mv * c
        iz, ix = int(pz / dz), int(px / dx)
        if 2 <= iz < len(z) - 2 and 1 <= ix < len(x) - 1:  # ~0.3 mm calcification, strong reflector
            field_[iz - 2: iz + 3, ix - 1: ix + 2] += 30.0 * rng.choice([-1.0, 1.0], size=(5, 3)).astype(np.float32)
    return field_, inside


@dataclass
class BMode:
    """Intermediate products of one acquisition (envelope rows = every 2nd RF sample)."""

    envelope: np.ndarray      # after TGC, before log compression
    image: np.ndarray         # float 0..1 after log compression
    inside: np.ndarray        # testis mask
    z: np.ndarray             # depth of each envelope row (mm)
    x: np.ndarray             # lateral position of each scan line (mm)


def acquire(scene: Scene, scanner: Scanner, rng: np.random.Generator, gain_db: float = 0.0,
            homogeneous: bool = False, width_mm: float | None = None) -> BMode:
    """Scatterers -> attenuation -> PSF (RF) + electronic noise -> Hilbert envelope -> TGC -> log."""
    z, x, dz = _grid(scanner, width_mm=width_mm)
    field_, inside = scatterer_field(scene, z, x, rng, homogeneous=homogeneous)
    alpha = ATTENUATION_DB_CM_MHZ / 10.0 / 8.686  # nepers per mm per MHz, one way
    att = np.exp(-2.0 * alpha * scanner.f0_mhz * z).astype(np.float32)  # round trip
    field_ *= att[:, None]
    lat = _lateral_beam(field_, scanner)
    # Electronic noise (relative to unit scatterers) enters after the beam, before the receive filter.
    lat += 10 ** (scanner.noise_db / 20.0) * rng.standard_normal(lat.shape, dtype=np.float32)
    env = envelope_from_rf_spectrum(_rf_spectrum(lat, scanner, dz), len(z))
    z_env = z[::2]
    tgc_db = scanner.tgc_error_db_per_cm * (z_env / 10.0)
    tgc = (np.exp(2.0 * alpha * scanner.f0_mhz * z_env) * 10 ** (tgc_db / 20.0)).astype(np.float32)
    env *= tgc[:, None]
    return BMode(envelope=env, image=log_compress(env, scanner, gain_db), inside=inside[::2], z=z_env, x=x)


def log_compress(envelope: np.ndarray, scanner: Scanner, gain_db: float = 0.0) -> np.ndarray:
    """dB relative to unit parenchyma -> [0, 1]; unit parenchyma sits 28 dB above the display floor."""
    offset = np.float32(scanner.gain_db + gain_db - 20.0 * math.log10(_unit_rms(scanner)) + 28.0)
    db = np.float32(20.0) * np.log10(np.maximum(envelope, np.float32(1e-12))) + offset
    out = np.clip(db / np.float32(scanner.dynamic_range_db), 0.0, 1.0)
    return out ** np.float32(scanner.gamma) if scanner.gamma != 1.0 else out


def speckle_patch_envelope(seed: int = 0, scanner: str = "development", patch_mm: float = 10.0) -> np.ndarray:
    """Pre-log envelope (after TGC) of a central patch of homogeneous parenchyma in a rendered testis:
    the Rayleigh check (mean/std ≈ 1.91) runs on this."""
    sc = SCANNERS[scanner]
    scene = Scene(cx=sc.width_mm / 2, cz=20.0, a=22.0, b=12.0, tilt=0.0)
    bm = acquire(scene, sc, np.random.default_rng(seed), homogeneous=True)
    zc, xc = np.searchsorted(bm.z, scene.cz), np.searchsorted(bm.x, scene.cx)
    hz = int(np.searchsorted(bm.z, patch_mm / 2))
    hx = int(np.searchsorted(bm.x, patch_mm / 2))
    patch = bm.envelope[zc - hz: zc + hz, xc - hx: xc + hx]
    assert bm.inside[zc - hz: zc + hz, xc - hx: xc + hx].all()
    return patch


def _text(img, s, org, scale=0.45, color=(200, 200, 200), thick=1):
    import cv2

    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)


def compose_screen(bmode: BMode, scene: Scene, scanner: Scanner, side: str, gain_db: float,
                   caliper: bool, frame_label: str = "", frozen: bool = False,
                   x_offset_mm: float = 0.0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Scan-convert the beam-grid image onto a whole cart screen (RGB uint8) and return the testis
    ROI (x, y, w, h) in screen pixels."""
    import cv2

    W, H = scanner.screen
    ox, oy = scanner.origin
    ppm = scanner.px_per_mm
    fw, fh = int(round(scanner.width_mm * ppm)), int(round(scanner.depth_mm * ppm))
    # Scan conversion (linear array): beam grid (z, line) -> display pixels, remapped by position.
    img = bmode.image
    gx = (np.arange(fw, dtype=np.float32) + 0.5) / ppm + x_offset_mm
    gz = (np.arange(fh, dtype=np.float32) + 0.5) / ppm
    map_x = np.interp(gx, bmode.x, np.arange(len(bmode.x))).astype(np.float32)
    map_z = np.interp(gz, bmode.z, np.arange(len(bmode.z))).astype(np.float32)
    # Average over the axial samples that fall in one display pixel (anti-aliasing), then remap.
    factor = max(1, int(len(bmode.z) / fh))
    if factor > 1:
        img = cv2.resize(img.astype(np.float32), (img.shape[1], img.shape[0] // factor), interpolation=cv2.INTER_AREA)
        map_z = map_z / (len(bmode.z) / img.shape[0])
    mx, mz = np.meshgrid(map_x, map_z)
    disp = cv2.remap(img.astype(np.float32), mx, mz, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    grey = np.clip(disp * 255.0, 0, 255)
    screen = np.empty((H, W, 3), np.uint8)
    screen[:] = (10, 11, 14)
    tint = np.array(scanner.tint, np.float32)
    screen[oy: oy + fh, ox: ox + fw] = np.clip(grey[:, :, None] * tint[None, None, :] + 0.5, 0, 255).astype(np.uint8)
    cv2.rectangle(screen, (ox - 1, oy - 1), (ox + fw, oy + fh), (60, 60, 66), 1)

    # Depth scale: tick every 5 mm, label every cm.
    sx = ox + fw + 8
    for mm in range(0, int(scanner.depth_mm) + 1, 5):
        y = oy + int(round(mm * ppm))
        cv2.line(screen, (sx, y), (sx + (10 if mm % 10 == 0 else 5), y), (190, 190, 190), 1)
        if mm % 10 == 0:
            _text(screen, f"{mm // 10}", (sx + 14, y + 5), 0.4)
    focus_y = oy + int(round(scene.cz * ppm))
    cv2.fillPoly(screen, [np.array([[ox - 12, focus_y - 5], [ox - 4, focus_y], [ox - 12, focus_y + 5]])],
                 (90, 200, 240))

    gain_total = 50 + scanner.gain_db + gain_db
    items = [f"{scanner.name}  NOA-EDGE PHANTOM", f"{scanner.probe}  {scanner.f0_mhz:.1f}MHz",
             f"Gain {gain_total:.0f}dB  DR {scanner.dynamic_range_db:.0f}", f"Depth {scanner.depth_mm / 10:.1f}cm",
             f"TESTIS {'RIGHT' if side == 'R' else 'LEFT'} LONG"]
    if scanner.layout == "top":
        _text(screen, items[0], (20, 28), 0.55, (230, 230, 230))
        _text(screen, "   ".join(items[1:4]), (20, 56), 0.45)
        _text(screen, items[4], (ox, oy + fh + 28), 0.5, (120, 220, 255))
    else:
        for i, s in enumerate(items):
            _text(screen, s, (10, 110 + 26 * i), 0.42, (235, 225, 200) if i == 0 else (190, 190, 190))
    if frame_label:
        _text(screen, frame_label, (W - 200, H - 20), 0.45)
    if frozen:
        _text(screen, "FROZEN", (W - 120, 40), 0.7, (80, 200, 255), 2)

    # ROI: bounding box of the (tilted) ellipse, 6% margin, clipped to the image field.
    c, s_ = math.cos(scene.tilt), math.sin(scene.tilt)
    hx = math.sqrt((scene.a * c) ** 2 + (scene.b * s_) ** 2)
    hz = math.sqrt((scene.a * s_) ** 2 + (scene.b * c) ** 2)
    cxp = ox + (scene.cx - x_offset_mm) * ppm
    czp = oy + scene.cz * ppm
    x0 = int(max(ox, math.floor(cxp - 1.06 * hx * ppm)))
    x1 = int(min(ox + fw, math.ceil(cxp + 1.06 * hx * ppm)))
    y0 = int(max(oy, math.floor(czp - 1.06 * hz * ppm)))
    y1 = int(min(oy + fh, math.ceil(czp + 1.06 * hz * ppm)))
    roi = (x0, y0, max(1, x1 - x0), max(1, y1 - y0))

    if caliper:  # '+' marks at both poles, dotted line, measured distance
        p1 = (int(cxp - scene.a * c * ppm), int(czp - scene.a * s_ * ppm))
        p2 = (int(cxp + scene.a * c * ppm), int(czp + scene.a * s_ * ppm))
        for p in (p1, p2):
            cv2.drawMarker(screen, p, (80, 230, 255), cv2.MARKER_CROSS, 12, 1)
        for t in np.linspace(0.05, 0.95, 19):
            q = (int(p1[0] + t * (p2[0] - p1[0])), int(p1[1] + t * (p2[1] - p1[1])))
            cv2.circle(screen, q, 1, (80, 230, 255), -1)
        _text(screen, f"1 Dist {2 * scene.a / 10:.2f} cm", (ox, oy + fh + 52), 0.45, (80, 230, 255))
    return screen, roi
