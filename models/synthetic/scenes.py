"""Seeded synthetic scenes: textured shapes on textured backgrounds, with exact truth.

Everything is drawn from one ``numpy.random.Generator`` seeded by the caller, so a seed
always gives byte-identical images and truth. A scene is built in two steps that the video
generator reuses: sample ``Shape`` descriptions (geometry + appearance), then ``render``
them, in order, over a background; later shapes occlude earlier ones and the truth
(label map, instance masks, boxes) is computed from what is visible.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["background", "circle", "rectangle", "triangle", "star", "ring"]
CIRCLE, RECTANGLE, TRIANGLE, STAR, RING = 1, 2, 3, 4, 5

SIDE_RANGE = (160, 640)  # image side lengths, pixels
ASPECT_RANGE = (0.5, 2.0)  # width / height
# Instances whose visible part is smaller than this (pixels) are dropped from the truth
# and their fragment is labelled background: a few occluded pixels are not an object.
MIN_VISIBLE_AREA = 48


@dataclass(frozen=True)
class Instance:
    class_id: int
    mask: np.ndarray  # (H, W) bool, visible pixels only
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 of the visible pixels (x2, y2 exclusive)
    # Polygons' corners / tips (rectangle 4, triangle 3, star 5 outer tips) as (x, y, visible),
    # clockwise from 12 o'clock around their centroid; x, y in continuous pixel coordinates
    # (pixel i spans [i, i + 1), as torchvision's keypoint heatmaps read them); visible 0 when
    # the point is outside the image or another shape covers it. Empty for circles and rings.
    keypoints: tuple[tuple[float, float, int], ...] = ()


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    labels: np.ndarray  # (H, W) uint8 class ids
    instances: list[Instance]


@dataclass(frozen=True)
class Shape:
    """One object: geometry in image coordinates plus how its surface looks."""

    class_id: int
    cx: float
    cy: float
    radius: float  # circumradius, pixels
    angle: float  # radians
    aspect: float  # rectangle side ratio / ring inner-radius ratio / star inner-radius ratio
    vertex_jitter: tuple[float, ...]  # per-vertex angle offsets (triangle), radians
    colour: tuple[int, int, int]
    stripe_colour: tuple[int, int, int]
    texture: str  # "flat" | "stripes" | "noise"
    stripe_period: float
    texture_seed: int

    def moved(self, dx: float, dy: float, dangle: float = 0.0, scale: float = 1.0) -> "Shape":
        return replace(self, cx=self.cx + dx, cy=self.cy + dy, angle=self.angle + dangle, radius=self.radius * scale)


def random_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) with both sides in SIDE_RANGE and width/height in ASPECT_RANGE."""
    lo, hi = SIDE_RANGE
    while True:
        height = int(rng.integers(lo, hi + 1))
        aspect = float(np.exp(rng.uniform(np.log(ASPECT_RANGE[0]), np.log(ASPECT_RANGE[1]))))
        width = round(height * aspect)
        if lo <= width <= hi:
            return height, width


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def random_shape(rng: np.random.Generator, height: int, width: int, class_id: int | None = None) -> Shape:
    short = min(height, width)
    class_id = int(rng.integers(1, len(CLASSES))) if class_id is None else class_id
    radius = float(rng.uniform(0.07, 0.22) * short)
    aspect = {
        RECTANGLE: rng.uniform(0.35, 1.0),
        RING: rng.uniform(0.4, 0.7),
        STAR: rng.uniform(0.35, 0.55),
    }.get(class_id, 1.0)
    return Shape(
        class_id=class_id,
        cx=float(rng.uniform(0, width)),
        cy=float(rng.uniform(0, height)),
        radius=radius,
        angle=float(rng.uniform(0, 2 * np.pi)),
        aspect=float(aspect),
        vertex_jitter=tuple(float(j) for j in rng.uniform(-0.35, 0.35, size=3)),
        colour=random_colour(rng),
        stripe_colour=random_colour(rng),
        texture=str(rng.choice(["flat", "stripes", "noise"])),
        stripe_period=float(rng.uniform(4, 16)),
        texture_seed=int(rng.integers(0, 2**31)),
    )


def _polygon(shape: Shape) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape, rotated by its angle, centred on (cx, cy)."""
    if shape.class_id == RECTANGLE:
        half_diag_angle = np.arctan(shape.aspect)  # corners of a w x (aspect*w) box on the circumcircle
        angles = np.array([half_diag_angle, np.pi - half_diag_angle, np.pi + half_diag_angle, -half_diag_angle])
        radii = np.full(4, shape.radius)
    elif shape.class_id == TRIANGLE:
        angles = np.arange(3) * 2 * np.pi / 3 + np.array(shape.vertex_jitter)
        radii = np.full(3, shape.radius)
    elif shape.class_id == STAR:
        angles = np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, shape.radius, shape.radius * shape.aspect)
    else:
        raise ValueError(f"class {shape.class_id} is not a polygon")
    angles = angles + shape.angle
    return list(zip((shape.cx + radii * np.cos(angles)).tolist(), (shape.cy + radii * np.sin(angles)).tolist()))


def shape_keypoints(shape: Shape, visible: np.ndarray) -> tuple[tuple[float, float, int], ...]:
    """The corners / tips of a polygonal shape, in a canonical order the image shows: clockwise
    from 12 o'clock around their centroid (a rotated copy of the shape gets the same order up
    to where the first point crosses 12 o'clock). ``visible``: the instance's visible pixels;
    a point is visible when one of the 3x3 pixels around it is."""
    if shape.class_id not in (RECTANGLE, TRIANGLE, STAR):
        return ()
    # PIL draws the polygon with pixel centres at integer coordinates: + 0.5 for continuous ones
    points = np.array(_polygon(shape))[:: 2 if shape.class_id == STAR else 1] + 0.5
    centre = points.mean(axis=0)
    clockwise = np.mod(np.arctan2(points[:, 0] - centre[0], centre[1] - points[:, 1]), 2 * np.pi)
    height, width = visible.shape
    result = []
    for x, y in points[np.argsort(clockwise, kind="stable")]:
        col, row = int(np.floor(x)), int(np.floor(y))
        seen = 0 <= x < width and 0 <= y < height and bool(visible[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2].any())
        result.append((float(x), float(y), int(seen)))
    return tuple(result)


def shape_mask(shape: Shape, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    """(height, width) bool mask of the shape inside the window whose top-left is (x0, y0)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = shape.cx - x0, shape.cy - y0, shape.radius
    if shape.class_id in (CIRCLE, RING):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
        if shape.class_id == RING:
            inner = r * shape.aspect
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        draw.polygon([(x - x0, y - y0) for x, y in _polygon(shape)], fill=1)
    return np.asarray(canvas, dtype=bool)


def shape_texture(shape: Shape, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    """(height, width, 3) float32 surface colour; textures move and turn with the shape."""
    base = np.array(shape.colour, np.float32)
    if shape.texture == "flat":
        return np.broadcast_to(base, (height, width, 3))
    if shape.texture == "stripes":
        ys, xs = np.mgrid[y0 : y0 + height, x0 : x0 + width].astype(np.float32)
        along = (xs - shape.cx) * np.cos(shape.angle) + (ys - shape.cy) * np.sin(shape.angle)
        on = (np.sin(along * (2 * np.pi / shape.stripe_period)) > 0)[..., None]
        return np.where(on, np.array(shape.stripe_colour, np.float32), base)
    # "noise": a fixed per-shape grain pattern, anchored to the shape's centre
    side = int(2 * np.ceil(shape.radius)) + 3
    grain = np.random.default_rng(shape.texture_seed).normal(0, 28, size=(side, side, 1)).astype(np.float32)
    oy, ox = y0 - int(round(shape.cy)) + side // 2, x0 - int(round(shape.cx)) + side // 2
    ys = np.clip(np.arange(oy, oy + height), 0, side - 1)
    xs = np.clip(np.arange(ox, ox + width), 0, side - 1)
    return base + grain[ys[:, None], xs[None, :]]


def make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8: smooth colour blotches, optionally with faint stripes."""
    grid = rng.uniform(0, 255, size=(int(rng.integers(2, 7)), int(rng.integers(2, 7)), 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), np.float32)
    if rng.random() < 0.5:
        theta, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        stripes = np.sin((xs * np.cos(theta) + ys * np.sin(theta)) * (2 * np.pi / period))
        image += stripes[..., None] * rng.uniform(5, 30)
    return np.clip(image, 0, 255).astype(np.uint8)


def render(
    background: np.ndarray, shapes: list[Shape], noise_rng: np.random.Generator, noise_sigma: float
) -> Scene:
    """Draw shapes in order over a copy of ``background`` and derive the visible truth."""
    height, width = background.shape[:2]
    image = background.astype(np.float32)
    owner = np.full((height, width), -1, np.int16)  # index of the shape that owns each pixel
    for index, shape in enumerate(shapes):
        pad = int(np.ceil(shape.radius)) + 1
        x0, y0 = max(int(shape.cx) - pad, 0), max(int(shape.cy) - pad, 0)
        x1, y1 = min(int(shape.cx) + pad + 1, width), min(int(shape.cy) + pad + 1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        mask = shape_mask(shape, x0, y0, y1 - y0, x1 - x0)
        window = image[y0:y1, x0:x1]
        window[mask] = shape_texture(shape, x0, y0, y1 - y0, x1 - x0)[mask]
        owner[y0:y1, x0:x1][mask] = index
    if noise_sigma > 0:
        image += noise_rng.normal(0, noise_sigma, size=image.shape).astype(np.float32)
    labels = np.zeros((height, width), np.uint8)
    instances = []
    for index, shape in enumerate(shapes):
        visible = owner == index
        if visible.sum() < MIN_VISIBLE_AREA:
            continue
        labels[visible] = shape.class_id
        ys, xs = np.nonzero(visible)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        instances.append(Instance(shape.class_id, visible, box, shape_keypoints(shape, visible)))
    return Scene(np.clip(image, 0, 255).astype(np.uint8), labels, instances)


def make_scene(seed: int, height: int | None = None, width: int | None = None) -> Scene:
    """One random scene; size is random (SIDE_RANGE, ASPECT_RANGE) unless given."""
    rng = np.random.default_rng(seed)
    if height is None or width is None:
        random_height, random_width = random_size(rng)
        height, width = height or random_height, width or random_width
    background = make_background(rng, height, width)
    shapes = [random_shape(rng, height, width) for _ in range(int(rng.integers(1, 8)))]
    return render(background, shapes, rng, noise_sigma=float(rng.uniform(0, 10)))
