"""Drawing of the synthetic X-rays: a PA chest and a lumbar spine (lateral or AP view), with lesions.

Images are float32 "brightness" maps (0 = air/black, about 0.6 = soft tissue, 1 = metal), drawn with
vectorized numpy and OpenCV at the requested size. Each lesion has a class-specific shape, texture and
anatomical place and returns its box ``(x0, y0, x1, y1)`` in pixel-edge coordinates of the image
(``0 <= x0 < x1 <= width``). :mod:`detx.synthetic.generator` turns the maps into DICOM files.

Anatomy is laid out in a normalized frame: for the chest ``nx`` runs across the thorax (0 = the patient's
right chest wall, shown on the image's left) and ``ny`` from the lung apices (about 0.07) to the
costophrenic angles (about 0.8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

Box = tuple[float, float, float, float]

# ------------------------------------------------------------------------------------------------ helpers


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (edges replicated, kernel radius 3 sigma). scipy's, not OpenCV's: cv2.GaussianBlur of a
    float32 image gives other values under OpenCV 4.12 and 5.1 (docs/synthetic.md, "Same pixels everywhere")."""
    if sigma < 0.3:
        return img.astype(np.float32, copy=False)
    return gaussian_filter(img.astype(np.float32, copy=False), float(sigma), mode="nearest", truncate=3.0)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Zero-mean smooth random field of about unit amplitude with ``cells`` blobs across the larger side."""
    gh = max(2, int(round(cells * h / max(h, w))) + 1)
    gw = max(2, int(round(cells * w / max(h, w))) + 1)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _mask_box(mask: np.ndarray, h: int, w: int, pad: float = 0.0) -> Box | None:
    """Pixel-edge box of the True pixels of ``mask`` (None if empty), padded by ``pad`` px and clipped."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    x0, x1 = max(0.0, cols[0] - pad), min(float(w), cols[-1] + 1.0 + pad)
    y0, y1 = max(0.0, rows[0] - pad), min(float(h), rows[-1] + 1.0 + pad)
    return (float(x0), float(y0), float(x1), float(y1))


def _poly_mask(h: int, w: int, polys: list[np.ndarray], closed: bool = True, thickness: int = 0) -> np.ndarray:
    """Anti-aliased float mask of filled polygons (``thickness=0``) or polylines, points in pixels (x, y)."""
    canvas = np.zeros((h, w), np.uint8)
    pts = [np.round(np.asarray(p, np.float64) * 16).astype(np.int32).reshape(-1, 1, 2) for p in polys]
    if thickness <= 0:
        cv2.fillPoly(canvas, pts, 255, lineType=cv2.LINE_AA, shift=4)
    else:
        cv2.polylines(canvas, pts, closed, 255, thickness=int(thickness), lineType=cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


def _sample_point(rng: np.random.Generator, mask: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    i = int(rng.integers(ys.size))
    return float(xs[i]) + float(rng.random()), float(ys[i]) + float(rng.random())


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


def _blob(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float, rng: np.random.Generator,
          lobulation: float = 0.12, edge: float = 0.15) -> np.ndarray:
    """A lobulated disc of radius ``r`` px: 1 inside, soft edge of relative width ``edge`` (full-size array,
    computed only in the disc's bounding square)."""
    p1, p2 = rng.uniform(0, 2 * np.pi, 2)
    out = np.zeros((yy.shape[0], xx.shape[1]), np.float32)
    reach = r * (1 + 1.6 * lobulation) + 2
    x0, x1 = max(0, int(cx - reach)), min(xx.shape[1], int(cx + reach) + 2)
    y0, y1 = max(0, int(cy - reach)), min(yy.shape[0], int(cy + reach) + 2)
    if x0 >= x1 or y0 >= y1:
        return out
    dx, dy = xx[:, x0:x1] - cx, yy[y0:y1] - cy
    theta = np.arctan2(dy, dx)
    rr = r * (1 + lobulation * np.sin(3 * theta + p1) + 0.6 * lobulation * np.sin(5 * theta + p2))
    d = np.sqrt(dx * dx + dy * dy) / rr
    out[y0:y1, x0:x1] = _smoothstep((1.0 - d) / edge)
    return out


def _letter_mask(h: int, w: int, letter: str, x: int, baseline: int, scale: float) -> np.ndarray:
    """A burned-in side marker, "R" or "L", as anti-aliased strokes (cv2.polylines, whose output is the same
    under OpenCV 4.12 and 5.1, unlike cv2.putText's), about 22 px tall at ``scale`` 1; values 0..1."""
    s = 22.0 * scale
    if letter == "L":
        strokes = [np.array([[0.0, 0.0], [0.0, 1.0], [0.6, 1.0]])]
    else:
        t = np.linspace(-np.pi / 2, np.pi / 2, 9)
        bowl = np.stack([0.35 + 0.27 * np.cos(t), 0.27 + 0.27 * np.sin(t)], axis=1)
        strokes = [np.array([[0.0, 1.0], [0.0, 0.0], [0.35, 0.0]]), bowl,
                   np.array([[0.35, 0.54], [0.0, 0.54]]), np.array([[0.3, 0.54], [0.65, 1.0]])]
    polys = [np.stack([x + p[:, 0] * s, baseline - s + p[:, 1] * s], axis=1) for p in strokes]
    return _poly_mask(h, w, polys, closed=False, thickness=max(1, int(round(2 * scale))))


def finish_image(rng: np.random.Generator, img: np.ndarray, noise: float = 0.012) -> np.ndarray:
    """Exposure and contrast of the film (gamma), smooth variation (heel effect, uneven tissue), a burned-in
    side marker in a corner of some images, quantum noise and a little unsharpness."""
    h, w = img.shape
    field_ = 1.0 + 0.05 * _smooth_noise(rng, h, w, 3)
    yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    heel = 1.0 + float(rng.uniform(-0.05, 0.05)) * yy
    out = np.clip(img, 0.0, None) ** float(rng.uniform(0.85, 1.2)) * field_ * heel
    if rng.random() < 0.5:
        scale = max(h, w) / 400.0
        letter = str(rng.choice(["R", "L"]))
        x = int(w * (0.03 if rng.random() < 0.5 else 0.9))
        marker = _letter_mask(h, w, letter, x, int(h * 0.03 + 24 * scale), scale)
        out = np.maximum(out, marker * 1.05)
    grain = _blur(rng.standard_normal((h, w)).astype(np.float32), 0.6) * (noise * 1.6)
    out = out + grain * np.sqrt(np.clip(out, 0.02, None))
    return np.clip(out, 0.0, 1.2).astype(np.float32)


@dataclass
class Finding:
    class_name: str
    box: Box


# ------------------------------------------------------------------------------------------------- chest


@dataclass
class _Chest:
    """Geometry and layers of one chest image under construction."""

    rng: np.random.Generator
    h: int
    w: int
    tx0: float
    ty0: float
    tw: float
    th: float
    xx: np.ndarray  # (1, w) pixel x of column centers
    yy: np.ndarray  # (h, 1)
    nx: np.ndarray  # (1, w) normalized thorax coordinates
    ny: np.ndarray  # (h, 1)
    heart: tuple[float, float, float, float, float] = (0.56, 0.64, 0.15, 0.12, -0.35)  # cx, cy, ax, ay, angle
    knob: tuple[float, float, float] = (0.575, 0.29, 0.035)  # cx, cy, r (normalized)
    lung_params: dict = field(default_factory=dict)
    lungs: dict = field(default_factory=dict)  # side -> bool mask
    add: np.ndarray | None = None  # lesion density layer
    fill: np.ndarray | None = None  # 0..1: how much of the lung's air is replaced (fluid, consolidation)
    keep_markings: np.ndarray | None = None  # 1 where lung markings are visible

    def px(self, nx: float, ny: float) -> tuple[float, float]:
        return self.tx0 + nx * self.tw, self.ty0 + ny * self.th

    @property
    def scale(self) -> float:
        return min(self.tw, self.th)


def _lung_mask_at(nx: np.ndarray, ny: np.ndarray, p: dict) -> np.ndarray:
    """Inside one lung: rounded apex, straight-ish walls, diaphragm dome, sharp costophrenic angle."""
    s = p["side"]
    t = (ny - p["apex"]) / (p["base"] - p["apex"])
    tc = np.clip(t, 0.0, 1.0)
    half = p["hw"] * np.sqrt(np.clip(1.0 - (1.0 - tc) ** 2.4, 0.0, 1.0))
    cx = p["cx"] - s * 0.03 * (1.0 - tc)  # apex sits a little medially
    inside = (np.abs(nx - cx) < half) & (t > 0)
    dome = p["base"] - p["dome_h"] * np.clip(1.0 - ((nx - p["dome_cx"]) / p["dome_hw"]) ** 2, 0.0, None)
    return inside & (ny < dome)


def _ellipse_mask(nx, ny, cx, cy, ax, ay, angle) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = nx - cx, ny - cy
    u = (dx * c + dy * s) / ax
    v = (-dx * s + dy * c) / ay
    return u * u + v * v < 1.0


def _new_chest(rng: np.random.Generator, h: int, w: int) -> _Chest:
    th = h * rng.uniform(0.80, 0.92)
    tw = min(w * rng.uniform(0.84, 0.94), th * rng.uniform(0.95, 1.12))
    th = min(th, tw * 1.15)
    tx0 = (w - tw) / 2 + rng.uniform(-0.03, 0.03) * tw
    ty0 = (h - th) * rng.uniform(0.15, 0.55)
    xx = (np.arange(w, dtype=np.float32) + 0.5)[None, :]
    yy = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
    return _Chest(rng, h, w, tx0, ty0, tw, th, xx, yy, (xx - tx0) / tw, (yy - ty0) / th)


def _layout_lungs(c: _Chest) -> None:
    rng = c.rng
    for side in (-1, 1):  # -1: patient's right = image left
        c.lung_params[side] = {
            "side": side,
            "cx": 0.5 + side * rng.uniform(0.245, 0.26),
            "hw": rng.uniform(0.165, 0.18),
            "apex": rng.uniform(0.05, 0.08),
            "base": (0.79 if side < 0 else 0.82) + rng.uniform(-0.02, 0.02),
            "dome_h": rng.uniform(0.08, 0.12),
            "dome_cx": 0.5 + side * rng.uniform(0.2, 0.24),
            "dome_hw": rng.uniform(0.2, 0.24),
        }


def _carve_lungs(c: _Chest) -> None:
    hx, hy, hax, hay, hang = c.heart
    heart = _ellipse_mask(c.nx, c.ny, hx, hy, hax, hay, hang)
    # the heart sits on the diaphragm: below its widest row it continues down into the domes
    half = 1.0 / np.sqrt(np.cos(hang) ** 2 / hax ** 2 + np.sin(hang) ** 2 / hay ** 2)
    heart = heart | ((np.abs(c.nx - hx) < half * 0.98) & (c.ny > hy))
    ra = _ellipse_mask(c.nx, c.ny, 0.5 - 0.05, hy - 0.01, 0.055, 0.09, 0.0)  # right atrium border
    ra = ra | ((np.abs(c.nx - 0.45) < 0.054) & (c.ny > hy - 0.01))
    kx, ky, kr = c.knob
    knob = (c.nx - kx) ** 2 + ((c.ny - ky) * c.th / c.tw) ** 2 < kr * kr
    mediastinum = np.abs(c.nx - 0.5) < 0.075
    for side, p in c.lung_params.items():
        c.lungs[side] = _lung_mask_at(c.nx, c.ny, p) & ~heart & ~ra & ~knob & ~mediastinum
    c.heart_mask = heart


def _vessel_tree(c: _Chest) -> np.ndarray:
    """Lung markings: branching vessels radiating from each hilum, thinning towards the periphery."""
    rng = c.rng
    lw = max(1.0, c.scale * 0.006)
    by_depth: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
    for side in (-1, 1):
        hx, hy = c.px(0.5 + side * 0.12, 0.45)
        stack = []
        for ang in np.linspace(-np.pi * 0.45, np.pi * 0.55, 8):
            a = (np.pi / 2 - ang) if side > 0 else (np.pi / 2 + ang)
            stack.append((hx, hy, a + rng.normal(0, 0.12), c.scale * rng.uniform(0.1, 0.16), 1.9, 0))
        while stack:
            x, y, a, length, width, depth = stack.pop()
            n = 6
            pts = [(x, y)]
            for _ in range(n):
                a += rng.normal(0, 0.12)
                x += np.cos(a) * length / n
                y -= np.sin(a) * length / n
                pts.append((x, y))
            by_depth[depth].append(np.array(pts))
            if depth < 2:
                for da in (-0.45, 0.4):
                    stack.append((x, y, a + da + rng.normal(0, 0.1), length * 0.7, width * 0.65, depth + 1))
    canvas = np.zeros((c.h, c.w), np.float32)
    for depth, polys in by_depth.items():  # thinner and fainter with each branching
        width = 1.9 * 0.65 ** depth
        seg = _poly_mask(c.h, c.w, polys, closed=False, thickness=max(1, int(round(width * lw))))
        np.maximum(canvas, seg * (0.5 + 0.5 * width / 1.9), out=canvas)
    return _blur(canvas, lw * 0.6)


def _ribs_and_clavicles(c: _Chest, lung_soft: np.ndarray) -> np.ndarray:
    rng = c.rng
    bone = np.zeros((c.h, c.w), np.float32)
    rib_t = max(2, int(round(c.th * 0.022)))
    polys = []
    y0 = 0.03 + rng.uniform(-0.01, 0.01)
    for k in range(10):
        yk = y0 + k * 0.078
        u = np.linspace(0, 1, 24)
        for side in (-1, 1):
            nx = 0.5 + side * (0.045 + 0.43 * u)
            ny = yk - 0.04 * np.sin(np.pi * u * 0.9) + 0.12 * u ** 1.6 + 0.02 * k * u
            polys.append(np.stack([c.tx0 + nx * c.tw, c.ty0 + ny * c.th], 1))
    outer = _poly_mask(c.h, c.w, polys, closed=False, thickness=rib_t)
    inner = _poly_mask(c.h, c.w, polys, closed=False, thickness=max(1, rib_t // 3))
    bone += (0.065 * outer - 0.025 * inner) * (0.35 + 0.65 * lung_soft)  # brighter cortical edges
    clav = []
    for side in (-1, 1):
        u = np.linspace(0, 1, 20)
        nx = 0.5 + side * (0.06 + 0.33 * u)
        ny = 0.14 - 0.09 * u + 0.012 * np.sin(2 * np.pi * u)
        clav.append(np.stack([c.tx0 + nx * c.tw, c.ty0 + ny * c.th], 1))
    bone += 0.1 * _poly_mask(c.h, c.w, clav, closed=False, thickness=max(2, int(round(c.th * 0.022))))
    # spine: vertebral bodies faintly through the mediastinum
    verts = []
    for k in range(16):
        yc = -0.02 + k * 0.062
        verts.append(np.array([c.px(0.462, yc), c.px(0.538, yc), c.px(0.538, yc + 0.05), c.px(0.462, yc + 0.05)]))
    bone += 0.035 * _blur(_poly_mask(c.h, c.w, verts), c.scale * 0.004)
    # humeral heads in the upper corners
    for side in (-1, 1):
        hx, hy = c.px(0.5 + side * 0.53, 0.1)
        d = np.sqrt((c.xx - hx) ** 2 + (c.yy - hy) ** 2) / (0.075 * c.scale)
        bone += 0.12 * _smoothstep((1 - d) / 0.1)
    return _blur(bone, max(0.5, c.scale * 0.002))


def _body(c: _Chest) -> tuple[np.ndarray, np.ndarray]:
    """Soft tissue mask (neck, shoulders, trunk) and its thickness profile."""
    ny = c.ny
    half = 0.12 + 0.40 * _smoothstep((ny + 0.04) / 0.2) - 0.03 * np.clip(ny - 0.7, 0, None)
    half = half + 0.08 * np.exp(-((ny - 0.08) / 0.07) ** 2)  # shoulders
    rel = np.abs(c.nx - 0.5) / half
    mask = rel < 1.0
    thick = np.sqrt(np.clip(1.0 - rel ** 2, 0.0, 1.0))
    return _blur(mask.astype(np.float32), max(1.0, c.scale * 0.006)), thick


# --- chest lesions: each adds to c.add (and may hide markings) and returns its box or None


def _lesion_nodule(c: _Chest) -> Box | None:
    rng = c.rng
    side = int(rng.choice([-1, 1]))
    r = rng.uniform(0.035, 0.065) * c.scale
    pt = _sample_point(rng, _erode(c.lungs[side], r * 1.1))
    if pt is None:
        return None
    blob = _blob(c.xx, c.yy, pt[0], pt[1], r, rng, lobulation=rng.uniform(0.03, 0.15), edge=0.18)
    c.add += 0.30 * blob
    return _mask_box(blob > 0.3, c.h, c.w)


def _lesion_effusion(c: _Chest) -> Box | None:
    rng = c.rng
    side = int(rng.choice([-1, 1]))
    p = c.lung_params[side]
    lung = c.lungs[side]
    x_med, x_lat = 0.5 + side * 0.075, p["cx"] + side * p["hw"]
    lat = np.clip((c.nx - x_med) / (x_lat - x_med), 0, 1)
    height = rng.uniform(0.18, 0.32)
    level = p["base"] - height * (0.35 + 0.65 * lat ** 2)  # meniscus: climbs the lateral wall
    region = lung & (c.ny > level)
    if region.sum() < 20:
        return None
    # homogeneous fluid below the meniscus, a haze over the lung just above it
    grad = _smoothstep((c.ny - level) / 0.025) * (0.85 + 0.15 * _smoothstep((c.ny - level) / 0.1))
    grad = np.maximum(grad, 0.35 * _smoothstep((c.ny - level + 0.1) / 0.1))
    np.maximum(c.fill, grad * c.side_masks[side], out=c.fill)
    c.keep_markings *= 1 - grad
    return _mask_box(region, c.h, c.w)


def _lesion_pneumothorax(c: _Chest) -> Box | None:
    rng = c.rng
    side = int(rng.choice([-1, 1]))
    p = c.lung_params[side]
    f = rng.uniform(0.62, 0.76)
    hx, hy = 0.5 + side * 0.09, p["base"] - 0.08
    shrunk = _lung_mask_at(hx + (c.nx - hx) / f, hy + (c.ny - hy) / f, p)
    lung = c.lungs[side]
    ptx = lung & ~shrunk
    if ptx.sum() < 20:
        return None
    soft = _blur(ptx.astype(np.float32), c.scale * 0.002)
    c.add -= 0.09 * soft  # free air: darker than lung, no markings
    c.keep_markings *= 1 - soft
    c.add += 0.05 * _blur((shrunk & lung).astype(np.float32), c.scale * 0.004)  # the collapsed lung is denser
    edge = shrunk & ~_erode(shrunk, max(1.0, c.scale * 0.007)) & lung  # visceral pleural line
    c.add += 0.2 * _blur(edge.astype(np.float32), 0.6)
    return _mask_box(ptx, c.h, c.w)


def _zone(c: _Chest, side: int, lower: bool, size: tuple[float, float]) -> np.ndarray:
    rng = c.rng
    p = c.lung_params[side]
    cy = rng.uniform(0.55, 0.68) if lower else rng.uniform(0.2, 0.32)
    cx = p["cx"] + side * rng.uniform(-0.02, 0.05)
    ax, ay = rng.uniform(*size), rng.uniform(*size) * 1.2
    return _ellipse_mask(c.nx, c.ny, cx, cy, ax, ay, rng.uniform(-0.3, 0.3)) & c.lungs[side]


def _lesion_fibrosis(c: _Chest) -> Box | None:
    """Coarse reticulation / honeycombing: packed bright rings in one lung zone."""
    rng = c.rng
    side = int(rng.choice([-1, 1]))
    region = _zone(c, side, bool(rng.random() < 0.7), (0.09, 0.13))
    if region.sum() < 20:
        return None
    box = _mask_box(region, c.h, c.w)
    x0, y0, x1, y1 = box
    cell = c.scale * 0.03
    n = int((x1 - x0) * (y1 - y0) / (cell * cell)) + 1
    cx = rng.uniform(x0, x1, n)
    cy = rng.uniform(y0, y1, n)
    rings = []
    for k in range(n):
        rr = cell * rng.uniform(0.35, 0.55)
        ang = np.linspace(0, 2 * np.pi, 12)
        rings.append(np.stack([cx[k] + rr * np.cos(ang), cy[k] + rr * np.sin(ang)], 1))
    tex = _poly_mask(c.h, c.w, rings, closed=True, thickness=max(1, int(round(c.scale * 0.005))))
    soft = _blur(region.astype(np.float32), c.scale * 0.01)
    c.add += soft * (0.17 * tex + 0.05)
    return box


def _lesion_consolidation(c: _Chest) -> Box | None:
    rng = c.rng
    side = int(rng.choice([-1, 1]))
    region = _zone(c, side, bool(rng.random() < 0.6), (0.08, 0.12))
    noise = _smooth_noise(rng, c.h, c.w, 18)
    patch = region & (noise > -0.6)
    if patch.sum() < 20:
        return None
    soft = _blur(patch.astype(np.float32), c.scale * 0.012)
    np.maximum(c.fill, 0.75 * soft, out=c.fill)
    # air bronchograms: dark branching lines inside the opacity
    pt = _sample_point(rng, patch)
    br = []
    for _ in range(3):
        a = rng.uniform(0, 2 * np.pi)
        L = c.scale * rng.uniform(0.04, 0.08)
        br.append(np.array([pt, (pt[0] + L * np.cos(a), pt[1] + L * np.sin(a))]))
    bronch = _poly_mask(c.h, c.w, br, closed=False, thickness=max(1, int(round(c.scale * 0.006))))
    c.add -= 0.12 * soft * bronch
    c.keep_markings *= 1 - 0.7 * soft
    return _mask_box(soft > 0.35, c.h, c.w)


def _lesion_lung_opacity(c: _Chest) -> Box | None:
    rng = c.rng
    side = int(rng.choice([-1, 1]))
    pt = _sample_point(rng, _erode(c.lungs[side], c.scale * 0.05))
    if pt is None:
        return None
    sig = c.scale * rng.uniform(0.05, 0.08)
    g = np.exp(-(((c.xx - pt[0]) ** 2 + (c.yy - pt[1]) ** 2) / (2 * sig * sig))).astype(np.float32)
    g *= 1 + 0.25 * _smooth_noise(rng, c.h, c.w, 20)
    g *= _blur(c.lungs[side].astype(np.float32), c.scale * 0.01)
    c.add += 0.2 * g
    return _mask_box(g > 0.4, c.h, c.w)


def _lesion_infiltration(c: _Chest) -> Box | None:
    rng = c.rng
    side = int(rng.choice([-1, 1]))
    region = _zone(c, side, bool(rng.random() < 0.5), (0.07, 0.1))
    if region.sum() < 20:
        return None
    acc = np.zeros((c.h, c.w), np.float32)
    for _ in range(int(rng.integers(5, 10))):
        pt = _sample_point(rng, region)
        sig = c.scale * rng.uniform(0.012, 0.022)
        acc += np.exp(-(((c.xx - pt[0]) ** 2 + (c.yy - pt[1]) ** 2) / (2 * sig * sig)))
    acc = np.clip(acc, 0, 1)
    c.add += 0.22 * acc
    return _mask_box(acc > 0.3, c.h, c.w)


def _lesion_atelectasis(c: _Chest) -> Box | None:
    """Plate-like (discoid) atelectasis: a thick, nearly horizontal band in a lower zone."""
    rng = c.rng
    side = int(rng.choice([-1, 1]))
    p = c.lung_params[side]
    cy = rng.uniform(0.56, 0.68)
    cx = p["cx"] + side * rng.uniform(-0.03, 0.03)
    L = rng.uniform(0.12, 0.2)
    a = rng.uniform(-0.25, 0.25)
    pts = np.array([c.px(cx - L / 2 * np.cos(a), cy - L / 2 * np.sin(a)),
                    c.px(cx + L / 2 * np.cos(a), cy + L / 2 * np.sin(a))])
    band = _poly_mask(c.h, c.w, [pts], closed=False, thickness=max(2, int(round(c.scale * rng.uniform(0.02, 0.03)))))
    band = _blur(band, c.scale * 0.004) * _blur(c.lungs[side].astype(np.float32), 1.0)
    if (band > 0.3).sum() < 10:
        return None
    c.add += 0.3 * band
    return _mask_box(band > 0.3, c.h, c.w)


def _lesion_ild(c: _Chest) -> Box | None:
    """Fine reticulo-nodular pattern over a large lower zone."""
    rng = c.rng
    side = int(rng.choice([-1, 1]))
    region = _zone(c, side, True, (0.11, 0.15))
    if region.sum() < 20:
        return None
    box = _mask_box(region, c.h, c.w)
    x0, y0, x1, y1 = box
    step = c.scale * 0.016
    n = int((x1 - x0) * (y1 - y0) / (step * step)) + 1
    dots = np.zeros((c.h, c.w), np.uint8)
    for x, y in zip(rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)):
        cv2.circle(dots, (int(x), int(y)), max(1, int(round(c.scale * 0.004))), 255, -1)
    lines = []
    for x, y, a in zip(rng.uniform(x0, x1, n // 2), rng.uniform(y0, y1, n // 2), rng.uniform(0, np.pi, n // 2)):
        L = step * 1.2
        lines.append(np.array([(x, y), (x + L * np.cos(a), y + L * np.sin(a))]))
    tex = np.maximum(dots.astype(np.float32) / 255, _poly_mask(c.h, c.w, lines, closed=False, thickness=1))
    soft = _blur(region.astype(np.float32), c.scale * 0.01)
    c.add += soft * (0.14 * _blur(tex, 0.5) + 0.06)
    return box


def _lesion_calcification(c: _Chest) -> Box | None:
    rng = c.rng
    side = int(rng.choice([-1, 1]))
    pt = _sample_point(rng, _erode(c.lungs[side], c.scale * 0.04))
    if pt is None:
        return None
    spots = np.zeros((c.h, c.w), np.float32)
    spread = c.scale * 0.025
    for _ in range(int(rng.integers(3, 7))):
        x, y = pt[0] + rng.normal(0, spread * 0.5), pt[1] + rng.normal(0, spread * 0.5)
        r = c.scale * rng.uniform(0.006, 0.011)
        d = np.sqrt((c.xx - x) ** 2 + (c.yy - y) ** 2) / r
        np.maximum(spots, _smoothstep((1 - d) / 0.3), out=spots)
    c.add += 0.55 * spots
    return _mask_box(spots > 0.3, c.h, c.w, pad=max(1.0, c.scale * 0.004))


def _lesion_pleural_thickening(c: _Chest) -> Box | None:
    rng = c.rng
    side = int(rng.choice([-1, 1]))
    p = c.lung_params[side]
    lung = c.lungs[side]
    rim = lung & ~_erode(lung, c.scale * rng.uniform(0.018, 0.028))
    if rng.random() < 0.4:  # apical cap
        sector = c.ny < p["apex"] + 0.12
    else:  # lateral chest wall segment
        y1 = rng.uniform(0.25, 0.5)
        lat = (c.nx - p["cx"]) * side > 0.02
        sector = (c.ny > y1) & (c.ny < y1 + rng.uniform(0.15, 0.25)) & lat
    band = rim & sector
    if band.sum() < 10:
        return None
    c.add += 0.33 * _blur(band.astype(np.float32), c.scale * 0.003)
    return _mask_box(band, c.h, c.w)


def _lesion_other(c: _Chest) -> Box | None:
    """A thick-walled cavity: bright rim, air inside."""
    rng = c.rng
    side = int(rng.choice([-1, 1]))
    r = rng.uniform(0.03, 0.05) * c.scale
    pt = _sample_point(rng, _erode(c.lungs[side], r * 1.1))
    if pt is None:
        return None
    outer = _blob(c.xx, c.yy, pt[0], pt[1], r, rng, lobulation=0.08)
    inner = _blob(c.xx, c.yy, pt[0] + 0.1 * r, pt[1] - 0.1 * r, r * 0.6, rng, lobulation=0.05)
    c.add += 0.3 * outer - 0.34 * inner
    c.keep_markings *= 1 - outer
    return _mask_box(outer > 0.3, c.h, c.w)


def _heart_box(c: _Chest) -> Box | None:
    hx, hy, ax, ay, ang = c.heart
    lo = min(c.lung_params[1]["base"], c.lung_params[-1]["base"]) - 0.02
    return _mask_box(_ellipse_mask(c.nx, c.ny, hx, hy, ax, ay, ang) & (c.ny < lo), c.h, c.w)


def _knob_box(c: _Chest) -> Box | None:
    kx, ky, kr = c.knob
    x0, y0 = c.px(kx - kr, ky - kr * c.tw / c.th)
    x1, y1 = c.px(kx + kr, ky + kr * c.tw / c.th)
    return (max(0.0, x0), max(0.0, y0), min(float(c.w), x1), min(float(c.h), y1))


CHEST_LESIONS: dict[str, Callable[[_Chest], Box | None]] = {
    "Aortic enlargement": _knob_box,
    "Atelectasis": _lesion_atelectasis,
    "Calcification": _lesion_calcification,
    "Cardiomegaly": _heart_box,
    "Consolidation": _lesion_consolidation,
    "ILD": _lesion_ild,
    "Infiltration": _lesion_infiltration,
    "Lung Opacity": _lesion_lung_opacity,
    "Nodule/Mass": _lesion_nodule,
    "Other lesion": _lesion_other,
    "Pleural effusion": _lesion_effusion,
    "Pleural thickening": _lesion_pleural_thickening,
    "Pneumothorax": _lesion_pneumothorax,
    "Pulmonary fibrosis": _lesion_fibrosis,
}


def draw_chest(rng: np.random.Generator, h: int, w: int, findings: list[str],
               boxes_only: bool = False, lungs: dict[str, np.ndarray] | None = None
               ) -> tuple[np.ndarray | None, list[Finding]]:
    """Draw a PA chest radiograph of ``h`` x ``w`` pixels with the given findings (class names).

    ``boxes_only`` stops once the lesions are placed (before the lung markings, ribs and noise, which use ``rng``
    only after every box is fixed) and returns ``None`` for the image: the same boxes, a fraction of the time.
    ``lungs``, when given, receives the lung fields as ``h`` x ``w`` bool masks under ``"left"`` and ``"right"`` (the
    patient's sides: the left lung is on the image's right); it draws nothing from ``rng``.

    Returns:
        The brightness map (float32, about 0..1.2; None with ``boxes_only``) and one :class:`Finding` per drawn
        lesion (a finding whose place does not exist in this image, e.g. a lung too small for the nodule, is
        skipped).
    """
    c = _new_chest(rng, h, w)
    _layout_lungs(c)
    hx, hy, ax, ay, ang = (0.555 + rng.uniform(-0.01, 0.02), 0.67 + rng.uniform(-0.02, 0.02),
                           rng.uniform(0.15, 0.165), rng.uniform(0.1, 0.11), -0.35 + rng.uniform(-0.1, 0.1))
    if "Cardiomegaly" in findings:
        k = rng.uniform(1.4, 1.6)
        hx, ax, ay, hy = hx + 0.045, ax * k, ay * (1 + (k - 1) * 0.6), hy + 0.02
    c.heart = (hx, hy, ax, ay, ang)
    if "Aortic enlargement" in findings:
        c.knob = (0.5 + rng.uniform(0.1, 0.12), rng.uniform(0.27, 0.31), rng.uniform(0.06, 0.075))
    else:
        c.knob = (0.5 + rng.uniform(0.075, 0.085), rng.uniform(0.27, 0.31), rng.uniform(0.03, 0.038))
    _carve_lungs(c)
    if lungs is not None:
        lungs["right"], lungs["left"] = c.lungs[-1].copy(), c.lungs[1].copy()  # side -1: the patient's right
    body, thick = _body(c)
    lungs = c.lungs[-1] | c.lungs[1]
    lung_soft = _blur(lungs.astype(np.float32), max(1.0, c.scale * 0.005))
    c.add = np.zeros((h, w), np.float32)
    c.fill = np.zeros((h, w), np.float32)
    c.keep_markings = np.ones((h, w), np.float32)
    c.side_masks = {side: ((c.nx - 0.5) * side > 0).astype(np.float32) * np.ones((h, 1), np.float32)
                    for side in (-1, 1)}

    out: list[Finding] = []
    for name in findings:
        box = CHEST_LESIONS[name](c)
        if box is not None and box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
            out.append(Finding(name, box))
    if boxes_only:
        return None, out

    img = 0.03 + body * (0.40 + 0.22 * thick)
    air = lung_soft * (1.0 - c.fill)
    img = img - air * (0.36 + 0.04 * _smoothstep((c.ny - 0.3) / 0.5))
    # gastric bubble under the left dome
    p = c.lung_params[1]
    bubble = _ellipse_mask(c.nx, c.ny, 0.5 + 0.17, p["base"] - p["dome_h"] + 0.06, 0.05, 0.025, 0.0)
    img = img - 0.12 * _blur(bubble.astype(np.float32), c.scale * 0.004) * body
    # trachea and main bronchi: an air column in the upper mediastinum
    airway = [np.array([c.px(0.5, -0.1), c.px(0.5, 0.33), c.px(0.44, 0.41)]), np.array([c.px(0.5, 0.33), c.px(0.575, 0.41)])]
    trachea = _poly_mask(h, w, airway, closed=False, thickness=max(2, int(round(c.scale * 0.032))))
    img = img - 0.07 * _blur(trachea, c.scale * 0.006) * body
    markings = _vessel_tree(c) * air * c.keep_markings
    bones = _ribs_and_clavicles(c, lung_soft)
    img = img + 0.085 * markings + bones * body + c.add * body
    return finish_image(rng, img), out


# ------------------------------------------------------------------------------------------------- spine


@dataclass
class _Vertebra:
    cx: float
    cy: float
    bw: float
    bh: float
    angle: float
    anterior: float = 1.0  # anterior height factor (< 1: wedge / collapse)
    shift: float = 0.0  # anterior slip in px (spondylolisthesis)
    density: float = 0.0  # extra density (sclerosis)
    disc_below: float = 0.0
    symmetric: bool = False  # AP view: both side walls waisted

    def corners(self, facing: int) -> np.ndarray:
        """Body corners (x, y): posterior-top, anterior-top, anterior-bottom, posterior-bottom."""
        hb, ha = self.bh / 2, self.bh * self.anterior / 2
        local = np.array([[-self.bw / 2, -hb], [self.bw / 2, -ha], [self.bw / 2, ha], [-self.bw / 2, hb]])
        return self._place(local, facing)

    def outline(self, facing: int) -> np.ndarray:
        """The body's outline: concave endplates and a waisted anterior wall (a polygon through the corners)."""
        hb, ha, bw = self.bh / 2, self.bh * self.anterior / 2, self.bw / 2
        u = np.linspace(-1, 1, 9)
        top = np.stack([u * bw, -(hb + ha) / 2 - u * (ha - hb) / 2 + 0.05 * self.bh * (1 - u ** 2)], 1)
        bottom = np.stack([u[::-1] * bw, (hb + ha) / 2 + u[::-1] * (ha - hb) / 2 - 0.05 * self.bh * (1 - u[::-1] ** 2)], 1)
        v = np.linspace(-1, 1, 7)[1:-1]
        front = np.stack([bw - 0.06 * self.bw * (1 - v ** 2), v * ha], 1)
        waist = 0.06 if self.symmetric else 0.02
        back = np.stack([-bw + waist * self.bw * (1 - v ** 2), -v * hb], 1)
        return self._place(np.concatenate([top, front, bottom, back]), facing)

    def _place(self, local: np.ndarray, facing: int) -> np.ndarray:
        local = local.copy()
        local[:, 0] *= facing
        c, s = np.cos(self.angle), np.sin(self.angle)
        rot = local @ np.array([[c, s], [-s, c]])
        return rot + np.array([self.cx + facing * self.shift, self.cy])


def draw_spine(rng: np.random.Generator, h: int, w: int, findings: list[str]) -> tuple[np.ndarray, list[Finding]]:
    """Draw a lumbar spine radiograph, lateral (about 2/3) or AP view, with VinDr-SpineXR findings (class names).

    On the AP view foraminal stenosis (a lateral-view finding) is not drawn and spondylolisthesis is a
    lateral slip; on the lateral view the slip is anterior.
    """
    ap = bool(rng.random() < 0.35)
    facing = int(rng.choice([-1, 1]))  # lateral: +1 = anterior to the image's right; AP: side of wedges/slips
    if ap:
        unit = min(h / rng.uniform(6.2, 7.0), w / rng.uniform(3.4, 4.2))
        bw = unit * rng.uniform(1.5, 1.65)
    else:
        unit = min(h / rng.uniform(6.2, 7.0), w / rng.uniform(3.4, 4.4))
        bw = unit * rng.uniform(1.2, 1.35)
    bh, disc = unit * rng.uniform(0.74, 0.8), unit * rng.uniform(0.2, 0.25)
    n = 6
    if ap:
        column_x = w / 2 + rng.uniform(-0.06, 0.06) * w
        curve = unit * rng.uniform(0.0, 0.3) * facing  # mild scoliosis
    else:
        column_x = w / 2 + rng.uniform(-0.1, 0.1) * w - facing * 0.15 * bw
        curve = facing * unit * rng.uniform(0.4, 0.8)  # lordosis
    total = n * bh + (n - 1) * disc
    top = (h - total) / 2 + rng.uniform(-0.4, 0.4) * unit
    verts: list[_Vertebra] = []
    chosen = list(findings)
    levels = rng.permutation(n - 1)  # lesion levels (never the last vertebra)
    slot = {name: int(levels[i % (n - 1)]) for i, name in enumerate(chosen)}
    y = top
    for i in range(n):
        t = (i + 0.5) / n
        cx = column_x + curve * np.sin(np.pi * t)
        angle = -0.4 * np.cos(np.pi * t) * curve / unit
        verts.append(_Vertebra(cx, y + bh / 2, bw * (1 + 0.03 * i), bh * (1 + 0.02 * i), angle, disc_below=disc,
                               symmetric=ap))
        y += bh + disc
    if "Vertebral collapse" in chosen:  # anterior wedge (lateral) or lateral wedge (AP)
        v = verts[slot["Vertebral collapse"]]
        v.anterior, v.bh, v.density = rng.uniform(0.4, 0.55), v.bh * 0.85, 0.06
    if "Disc space narrowing" in chosen:
        verts[slot["Disc space narrowing"]].disc_below = disc * rng.uniform(0.15, 0.3)
    if "Spondylolysthesis" in chosen:
        k = slot["Spondylolysthesis"]
        slip = bw * rng.uniform(0.2, 0.3)
        for v in verts[: k + 1]:
            v.shift += slip
    # restack vertically with the (possibly changed) heights and discs
    y = top
    for v in verts:
        v.cy = y + v.bh / 2
        y += v.bh + v.disc_below

    xx = (np.arange(w, dtype=np.float32) + 0.5)[None, :]
    yy = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
    # soft tissue of the trunk, with bowel gas
    trunk_c = column_x if ap else column_x + facing * bw * 0.9
    trunk_hw = min(w * 0.48, bw * (rng.uniform(2.3, 2.8) if ap else rng.uniform(2.6, 3.2)))
    rel = np.abs(xx - trunk_c) / trunk_hw
    body = _blur((rel < 1).astype(np.float32) * np.ones((h, 1), np.float32), unit * 0.08)
    img = 0.03 + body * (0.36 + 0.16 * np.sqrt(np.clip(1 - rel ** 2, 0, 1)))
    gas = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(3, 8))):
        side = float(rng.choice([-1.0, 1.0])) if ap else facing
        gx = trunk_c + side * rng.uniform(0.35 if ap else 0.2, 0.85) * trunk_hw
        gy = rng.uniform(0, h)
        r = unit * rng.uniform(0.2, 0.5)
        gas = np.maximum(gas, _blob(xx, yy, gx, gy, r, rng, lobulation=0.08, edge=0.5))
    img = img - 0.12 * gas * body

    bodies = np.zeros((h, w), np.float32)
    cortex = np.zeros((h, w), np.float32)
    rim_t = max(1, int(round(unit * 0.06)))
    post_polys, post_faint, rings = [], [], []
    for v in verts:
        cor = v.corners(facing)
        outline = v.outline(facing)
        m = _poly_mask(h, w, [outline])
        bodies = np.maximum(bodies, m * (1 + v.density / 0.2))
        cortex = np.maximum(cortex, _poly_mask(h, w, [outline], closed=True, thickness=rim_t))
        if ap:
            # pedicles seen end-on (oval rings), transverse processes, spinous process in the midline
            c0 = cor.mean(0)
            ux = np.array([np.cos(v.angle), np.sin(v.angle)])  # along the endplate (as in _place)
            uy = np.array([-np.sin(v.angle), np.cos(v.angle)])  # down the column
            t = np.linspace(0, 2 * np.pi, 16)[:, None]
            for sd in (-1, 1):
                pc = c0 + sd * 0.3 * v.bw * ux - 0.18 * v.bh * uy
                rings.append(pc + 0.07 * v.bw * np.cos(t) * ux + 0.2 * v.bh * np.sin(t) * uy)
                post_faint.append(np.array([c0 + sd * 0.48 * v.bw * ux - 0.2 * v.bh * uy,
                                            c0 + sd * 0.85 * v.bw * ux - 0.12 * v.bh * uy,
                                            c0 + sd * 0.85 * v.bw * ux + 0.02 * v.bh * uy,
                                            c0 + sd * 0.48 * v.bw * ux + 0.0 * v.bh * uy]))
            post_polys.append(c0 + 0.055 * v.bw * np.cos(t) * ux + (0.25 + 0.22 * np.sin(t)) * v.bh * uy)
        else:
            # pedicle, lamina and spinous process pointing backwards-down
            pt, pb = cor[0], cor[3]
            back = -facing
            post_polys.append(np.array([pt, pt + [back * 0.35 * v.bw, 0.05 * v.bh],
                                        pt + [back * 0.35 * v.bw, 0.45 * v.bh], pt + [0, 0.45 * v.bh]]))
            post_faint.append(np.array([pt + [back * 0.3 * v.bw, 0.1 * v.bh], pt + [back * 0.95 * v.bw, 0.35 * v.bh],
                                        pt + [back * 0.95 * v.bw, 0.8 * v.bh], pb + [back * 0.3 * v.bw, 0.2 * v.bh]]))
    post = np.maximum(_poly_mask(h, w, post_polys), 0.8 * _poly_mask(h, w, post_faint))
    if rings:
        post = np.maximum(post, 1.2 * _poly_mask(h, w, rings, closed=True, thickness=max(1, int(round(unit * 0.05)))))
    trab = 1 + 0.2 * _smooth_noise(rng, h, w, max(8, int(w / unit * 3)))
    img = img + body * (0.2 * _blur(bodies, unit * 0.02) * trab + 0.12 * _blur(cortex, unit * 0.015)
                        + 0.1 * _blur(post, unit * 0.03))

    extra = np.zeros((h, w), np.float32)
    out: list[Finding] = []

    def add(name: str, box: Box | None) -> None:
        if box is not None and box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
            out.append(Finding(name, box))

    for name in chosen:
        i = slot[name]
        v, nxt = verts[i], verts[i + 1]
        cv_, cn = v.corners(facing), nxt.corners(facing)
        if name == "Osteophytes":
            size = v.bh * rng.uniform(0.3, 0.42)
            # lateral: anterior corners; AP: the lateral corners of one side
            side = facing if not ap else float(rng.choice([-1.0, 1.0]))
            if ap and side != facing:
                a1, a2 = cv_[3], cn[0]
            else:
                a1, a2 = cv_[2], cn[1]  # bottom corner of the upper body, top corner of the lower one
            spur1 = np.array([a1 + [0, -0.35 * size], a1 + [side * 0.9 * size, 0.45 * size], a1 + [-side * 0.3 * size, 0]])
            spur2 = np.array([a2 + [0, 0.35 * size], a2 + [side * 0.9 * size, -0.45 * size], a2 + [-side * 0.3 * size, 0]])
            m = _poly_mask(h, w, [spur1, spur2])
            extra += 0.32 * _blur(m, unit * 0.015)
            add(name, _mask_box(m > 0.3, h, w, pad=unit * 0.05))
        elif name == "Surgical implant":
            k = int(rng.integers(1, 3))
            lv = verts[i: i + k + 1]
            screws, rods = [], []
            if ap:  # two rods over the pedicles, screws converging to the midline
                for sd in (-1, 1):
                    heads = []
                    for u in lv:
                        c0 = u.corners(facing).mean(0)
                        head = c0 + np.array([sd * 0.42 * u.bw, -0.12 * u.bh])
                        screws.append(np.array([head, c0 + np.array([sd * 0.08 * u.bw, -0.05 * u.bh])]))
                        heads.append(head)
                    rods.append(np.array(heads))
            else:
                heads = []
                for u in lv:
                    cu = u.corners(facing)
                    entry = (cu[0] + cu[3]) / 2 + np.array([-facing * 0.3 * u.bw, -0.1 * u.bh])
                    tip = (cu[1] + cu[2]) / 2 * 0.75 + (cu[0] + cu[3]) / 2 * 0.25
                    screws.append(np.array([entry, tip]))
                    heads.append(entry)
                rods.append(np.array(heads))
            m = _poly_mask(h, w, screws, closed=False, thickness=max(2, int(round(unit * 0.13))))
            m = np.maximum(m, _poly_mask(h, w, rods, closed=False, thickness=max(2, int(round(unit * 0.11)))))
            extra += 0.75 * m
            add(name, _mask_box(m > 0.3, h, w, pad=unit * 0.03))
        elif name == "Spondylolysthesis":
            m = _poly_mask(h, w, [cv_, cn])
            add(name, _mask_box(m > 0.3, h, w))
        elif name == "Foraminal stenosis" and not ap:
            # the foramen behind the disc: bony overgrowth fills it
            center = (cv_[3] + cn[0]) / 2 + np.array([-facing * 0.18 * v.bw, -0.1 * v.bh])
            r = unit * 0.3
            m = _blob(xx, yy, center[0], center[1], r, rng, lobulation=0.2, edge=0.3)
            extra += 0.22 * m
            add(name, _mask_box(m > 0.3, h, w, pad=unit * 0.05))
        elif name == "Disc space narrowing":
            end1 = np.array([cv_[3], cv_[2]])
            end2 = np.array([cn[0], cn[1]])
            scl = _poly_mask(h, w, [end1, end2], closed=False, thickness=max(2, int(round(unit * 0.1))))
            extra += 0.14 * _blur(scl, unit * 0.02)
            pts = np.concatenate([cv_[2:4], cn[0:2]])
            pad = np.array([0, 0.12 * v.bh])
            quad = np.array([pts[1] - pad, pts[0] - pad, pts[3] + pad, pts[2] + pad])
            add(name, _mask_box(_poly_mask(h, w, [quad]) > 0.3, h, w))
        elif name == "Vertebral collapse":
            add(name, _mask_box(_poly_mask(h, w, [cv_]) > 0.3, h, w, pad=unit * 0.02))
        elif name == "Other lesions":
            center = cv_.mean(0) + rng.uniform(-0.15, 0.15, 2) * np.array([v.bw, v.bh])
            r = v.bh * rng.uniform(0.22, 0.3)
            m = _blob(xx, yy, center[0], center[1], r, rng, lobulation=0.15, edge=0.25)
            ring = _blob(xx, yy, center[0], center[1], r * 1.3, rng, lobulation=0.1, edge=0.3) - m
            extra += -0.16 * m + 0.1 * np.clip(ring, 0, 1)
            add(name, _mask_box(m > 0.3, h, w, pad=unit * 0.08))
    # iliac crests / pelvis near the bottom
    crest_y = verts[-1].cy + unit * rng.uniform(0.0, 0.6)
    if ap:
        for sd in (-1, 1):
            wing = _blob(xx, yy, column_x + sd * 1.75 * bw, crest_y + 1.1 * unit, 1.25 * unit * 1.3, rng,
                         lobulation=0.05, edge=0.25)
            img = img + 0.09 * body * wing
    else:
        d = np.abs(yy - crest_y - 0.002 * (xx - column_x) ** 2 / unit) / (unit * 0.5)
        img = img + 0.05 * body * _smoothstep(1 - d)
    img = img + extra * body
    return finish_image(rng, img), out
