"""The ShapeWorld renderer: deterministic 32x32 RGB images from factors.

An image is a place (the background texture), optionally one object (a
shape with a fill colour and a dark outline, at some position, size and
rotation), optionally burning (flames rise from the object's top edge), and
optionally a style (a semi-transparent whole-image texture named like an
artist). Every factor stays identifiable under every other: the outline keeps
a green star visible on the grass, styles only partly cover the image.

``render(scene)`` depends on nothing but the scene, so the ground truth of
every image is known exactly.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import asdict, dataclass

import numpy as np

from .vocab import (
    ATTRIBUTES,
    COLORS,
    PLACE_NAMES,
    SHAPEWORLD,
    STYLE_NAMES,
    World,
    place_phrase,
)

SIZE = 32  # image side in pixels
_SS = 3  # supersampling factor for the object's coverage

# fill colours of objects (saturated, far from the place backgrounds)
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (225, 25, 30),
    "orange": (255, 135, 0),
    "yellow": (250, 230, 20),
    "green": (40, 215, 60),
    "blue": (30, 70, 245),
    "purple": (155, 40, 205),
}
OUTLINE_RGB = (20, 20, 20)

# share of scenes with a style, and of scenes with an object that burn (the
# share without an object belongs to the world: World.scene_shares)
P_STYLE = 0.35
P_BURNING = 0.2


@dataclass(frozen=True)
class Scene:
    """Everything that decides an image. ``seed`` varies textures and flames."""

    object: str | None
    color: str | None
    place: str
    style: str | None = None
    attribute: str | None = None
    x: float = 15.5
    y: float = 17.0
    size: float = 8.5  # radius in pixels of the object's bounding disc
    rotation: float = 0.0  # degrees
    seed: int = 0

    def factors(self) -> dict:
        return {
            "object": self.object,
            "color": self.color,
            "place": self.place,
            "style": self.style,
            "attribute": self.attribute,
        }

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------- shapes


def _poly(u: np.ndarray, v: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        x1, y1 = pts[i]
        x2, y2 = pts[(i + 1) % n]
        cond = (y1 > v) != (y2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = (x2 - x1) * (v - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= cond & (u < xint)
    return inside


def _star_pts(outer=1.0, inner=0.42):
    pts = []
    for k in range(10):
        ang = -math.pi / 2 + k * math.pi / 5
        r = outer if k % 2 == 0 else inner
        pts.append((r * math.cos(ang), r * math.sin(ang) + 0.08))
    return pts


_STAR = _star_pts()


def shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape in unit coordinates (v points down)."""
    r2 = u * u + v * v
    if name == "circle":
        return r2 <= 0.88**2
    if name == "square":
        return (np.abs(u) <= 0.68) & (np.abs(v) <= 0.68)
    if name == "triangle":
        return _poly(u, v, [(0.0, -0.9), (0.9, 0.7), (-0.9, 0.7)])
    if name == "star":
        return _poly(u, v, _STAR)
    if name == "heart":
        lobes = ((u - 0.38) ** 2 + (v + 0.3) ** 2 <= 0.44**2) | ((u + 0.38) ** 2 + (v + 0.3) ** 2 <= 0.44**2)
        return lobes | _poly(u, v, [(-0.8, -0.18), (0.8, -0.18), (0.0, 0.88)])
    if name == "cross":
        return ((np.abs(u) <= 0.27) & (np.abs(v) <= 0.92)) | ((np.abs(v) <= 0.27) & (np.abs(u) <= 0.92))
    if name == "ring":
        return (r2 <= 0.95**2) & (r2 >= 0.5**2)
    if name == "diamond":
        return np.abs(u) / 0.58 + np.abs(v) / 0.98 <= 1.0
    if name == "crescent":
        return (r2 <= 0.92**2) & ((u - 0.42) ** 2 + (v + 0.12) ** 2 > 0.72**2)
    if name == "arrow":
        shaft = (np.abs(v) <= 0.22) & (u >= -0.92) & (u <= 0.12)
        return shaft | _poly(u, v, [(0.1, -0.7), (0.95, 0.0), (0.1, 0.7)])
    if name in _GLYPHS:
        return _strokes(u, v, _GLYPHS[name])
    if name in _ICONS:
        return _ICONS[name](u, v)
    raise ValueError(f"unknown object {name!r}")


# ------------------------------------------------- letters, digits and icons

# Half-width of a glyph's strokes in unit coordinates: 0.17 of the object's
# radius is 2.4-3.4 px wide strokes at the sampled sizes, wide enough that the
# 1-px outline does not swallow them.
_STROKE = 0.17


def _segment(u: np.ndarray, v: np.ndarray, p: tuple[float, float], q: tuple[float, float]) -> np.ndarray:
    """Points within the stroke half-width of the segment p-q (a capsule)."""
    (x1, y1), (x2, y2) = p, q
    dx, dy = x2 - x1, y2 - y1
    t = np.clip(((u - x1) * dx + (v - y1) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return (u - x1 - t * dx) ** 2 + (v - y1 - t * dy) ** 2 <= _STROKE**2


def _arc(u: np.ndarray, v: np.ndarray, centre: tuple[float, float], radius: float, start: float, stop: float) -> np.ndarray:
    """Points within the stroke half-width of a circular arc, from angle
    ``start`` to ``stop`` in degrees (0: to the right, 90: down, since v
    points down), drawn counter-clockwise on the page (increasing angle)."""
    cx, cy = centre
    ang = np.degrees(np.arctan2(v - cy, u - cx))
    inside = np.mod(ang - start, 360.0) <= np.mod(stop - start, 360.0)
    ring = np.abs(np.sqrt((u - cx) ** 2 + (v - cy) ** 2) - radius) <= _STROKE
    return ring & inside


def _strokes(u: np.ndarray, v: np.ndarray, parts: tuple) -> np.ndarray:
    """The union of a glyph's strokes: ("line", p0, p1, ...) is a polyline,
    ("arc", centre, radius, start, stop) an arc."""
    out = np.zeros(u.shape, dtype=bool)
    for part in parts:
        if part[0] == "line":
            for p, q in itertools.pairwise(part[1:]):
                out |= _segment(u, v, p, q)
        else:
            out |= _arc(u, v, *part[1:])
    return out


# letters and digits, drawn as strokes in the unit square (v points down)
_GLYPHS: dict[str, tuple] = {
    "aitch": (("line", (-0.6, -0.82), (-0.6, 0.82)), ("line", (0.6, -0.82), (0.6, 0.82)), ("line", (-0.6, 0.0), (0.6, 0.0))),
    "kay": (("line", (-0.5, -0.85), (-0.5, 0.85)), ("line", (0.6, -0.85), (-0.45, 0.1)), ("line", (-0.2, -0.12), (0.65, 0.85))),
    "tee": (("line", (-0.75, -0.75), (0.75, -0.75)), ("line", (0.0, -0.75), (0.0, 0.88))),
    "ex": (("line", (-0.65, -0.8), (0.65, 0.8)), ("line", (0.65, -0.8), (-0.65, 0.8))),
    "wye": (("line", (-0.68, -0.85), (0.0, 0.0), (0.68, -0.85)), ("line", (0.0, 0.0), (0.0, 0.88))),
    "em": (("line", (-0.72, 0.85), (-0.72, -0.82), (0.0, 0.25), (0.72, -0.82), (0.72, 0.85)),),
    "zed": (("line", (-0.62, -0.8), (0.62, -0.8), (-0.62, 0.8), (0.62, 0.8)),),
    "two": (("arc", (0.0, -0.38), 0.44, 180.0, 30.0), ("line", (0.38, -0.16), (-0.58, 0.8), (0.62, 0.8))),
    "three": (("arc", (0.0, -0.42), 0.4, 160.0, 90.0), ("arc", (0.0, 0.4), 0.44, 270.0, 200.0)),
    "four": (("line", (0.32, 0.88), (0.32, -0.85), (-0.62, 0.35), (0.68, 0.35)),),
    "five": (("line", (0.55, -0.8), (-0.42, -0.8), (-0.42, -0.08)), ("arc", (0.0, 0.32), 0.46, 230.0, 150.0)),
    "seven": (("line", (-0.62, -0.8), (0.62, -0.8), (-0.12, 0.88)),),
    "eight": (("arc", (0.0, -0.44), 0.36, 0.0, 359.9), ("arc", (0.0, 0.4), 0.44, 0.0, 359.9)),
}


def _disc(u, v, cx, cy, r):
    return (u - cx) ** 2 + (v - cy) ** 2 <= r * r


def _box(u, v, x0, x1, y0, y1):
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


# glyph icons, filled like the shapes
_ICONS = {
    "house": lambda u, v: _box(u, v, -0.62, 0.62, -0.05, 0.85) | _poly(u, v, [(-0.9, 0.0), (0.0, -0.88), (0.9, 0.0)]),
    "tree": lambda u, v: _poly(u, v, [(0.0, -0.95), (0.88, 0.42), (-0.88, 0.42)]) | _box(u, v, -0.17, 0.17, 0.3, 0.95),
    "key": lambda u, v: (
        (_disc(u, v, -0.5, 0.0, 0.4) & ~_disc(u, v, -0.5, 0.0, 0.17))
        | _box(u, v, -0.15, 0.92, -0.12, 0.12)
        | _box(u, v, 0.5, 0.66, 0.0, 0.4)
        | _box(u, v, 0.76, 0.92, 0.0, 0.4)
    ),
    "fish": lambda u, v: (((u + 0.2) / 0.62) ** 2 + (v / 0.4) ** 2 <= 1.0) | _poly(u, v, [(0.25, 0.0), (0.92, -0.5), (0.92, 0.5)]),
    "bell": lambda u, v: (
        _poly(u, v, [(-0.5, -0.1), (-0.78, 0.55), (0.78, 0.55), (0.5, -0.1)])
        | (((u / 0.5) ** 2 + ((v + 0.1) / 0.75) ** 2 <= 1.0) & (v <= 0.0))
        | _disc(u, v, 0.0, 0.72, 0.17)
    ),
    "flag": lambda u, v: _box(u, v, -0.72, -0.52, -0.92, 0.92) | _box(u, v, -0.52, 0.78, -0.92, -0.05),
    "bolt": lambda u, v: _poly(u, v, [(0.2, -0.95), (-0.58, 0.12), (-0.05, 0.12), (-0.22, 0.95), (0.58, -0.15), (0.06, -0.15)]),
    "drop": lambda u, v: _disc(u, v, 0.0, 0.3, 0.56) | _poly(u, v, [(0.0, -0.95), (0.5, 0.06), (-0.5, 0.06)]),
    "hourglass": lambda u, v: _poly(u, v, [(-0.66, -0.88), (0.66, -0.88), (0.1, 0.0), (0.66, 0.88), (-0.66, 0.88), (-0.1, 0.0)]),
    "mushroom": lambda u, v: (_disc(u, v, 0.0, 0.08, 0.86) & (v <= 0.08)) | _box(u, v, -0.26, 0.26, 0.0, 0.82),
    "cup": lambda u, v: (
        _poly(u, v, [(-0.62, -0.62), (0.4, -0.62), (0.3, 0.72), (-0.52, 0.72)])
        | (_disc(u, v, 0.42, -0.02, 0.38) & ~_disc(u, v, 0.42, -0.02, 0.2) & (u >= 0.35))
    ),
}


# ------------------------------------------------------------------- textures


def _background(place: str, rng: np.random.Generator) -> np.ndarray:
    H = W = SIZE
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.zeros((H, W, 3), np.float32)

    def fill(rgb):
        img[:] = np.array(rgb, np.float32)

    if place == "grass":
        fill((70, 140, 50))
        blades = rng.random((H, W)) < 0.18
        img[blades] = (40, 100, 28)
        light = rng.random((H, W)) < 0.06
        img[light] = (110, 175, 80)
    elif place == "sand":
        fill((225, 195, 135))
        spk = rng.random((H, W)) < 0.15
        img[spk] = (190, 158, 100)
    elif place == "sky":
        fill((140, 195, 240))
        for _ in range(int(rng.integers(1, 3))):
            cx, cy = rng.uniform(0, W), rng.uniform(2, H - 2)
            rx, ry = rng.uniform(4, 8), rng.uniform(2, 3.5)
            cloud = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            img[cloud] = (245, 248, 252)
    elif place == "water":
        fill((35, 80, 150))
        phase = rng.uniform(0, 2 * math.pi)
        waves = np.mod(yy + 1.8 * np.sin(xx / 2.5 + phase), 6) < 1.2
        img[waves] = (85, 135, 205)
    elif place == "snow":
        fill((236, 239, 246))
        spk = rng.random((H, W)) < 0.12
        img[spk] = (195, 202, 220)
    elif place == "road":
        fill((88, 88, 92))
        spk = rng.random((H, W)) < 0.1
        img[spk] = (70, 70, 74)
        ly = int(rng.integers(4, H - 5))
        off = int(rng.integers(0, 8))
        dash = (np.mod(xx + off, 8) < 4) & (yy >= ly) & (yy < ly + 2)
        img[dash] = (235, 235, 235)
    else:
        raise ValueError(f"unknown place {place!r}")
    return img


def _blend(img: np.ndarray, where: np.ndarray, rgb, alpha: float) -> None:
    img[where] = (1 - alpha) * img[where] + alpha * np.array(rgb, np.float32)


def _apply_style(img: np.ndarray, style: str) -> np.ndarray:
    H = W = SIZE
    yy, xx = np.mgrid[0:H, 0:W]
    if style == "Ovalli":
        d = np.sqrt(((xx - 15.5) / 15.0) ** 2 + ((yy - 15.5) / 12.0) ** 2)
        f = np.clip(1.3 - 0.85 * d, 0.25, 1.0)
        img = img * f[..., None]
    elif style == "Strelka":
        _blend(img, np.mod(yy, 4) < 2, (255, 255, 255), 0.38)
    elif style == "Pointini":
        _blend(img, (np.mod(xx, 6) < 2) & (np.mod(yy, 6) < 2), (255, 255, 225), 0.85)
    elif style == "Mondrio":
        lines = np.isin(xx, (9, 10, 21, 22)) | np.isin(yy, (9, 10, 21, 22))
        _blend(img, lines, (0, 0, 0), 0.85)
    elif style == "Diagonov":
        _blend(img, np.mod(xx - yy, 6) == 0, (0, 0, 0), 0.6)
    else:
        raise ValueError(f"unknown style {style!r}")
    return img


# --------------------------------------------------------------------- render


def object_coverage(scene: Scene) -> np.ndarray:
    """Float (H, W) share of each pixel covered by the object (0 if none)."""
    if scene.object is None:
        return np.zeros((SIZE, SIZE), np.float32)
    n = SIZE * _SS
    g = (np.arange(n, dtype=np.float32) + 0.5) / _SS
    yy, xx = np.meshgrid(g, g, indexing="ij")
    th = math.radians(scene.rotation)
    c, s = math.cos(th), math.sin(th)
    dx, dy = (xx - scene.x) / scene.size, (yy - scene.y) / scene.size
    u = c * dx + s * dy
    v = -s * dx + c * dy
    m = shape_mask(scene.object, u, v).astype(np.float32)
    return m.reshape(SIZE, _SS, SIZE, _SS).mean(axis=(1, 3))


def render(scene: Scene) -> np.ndarray:
    """The image of a scene, uint8 (32, 32, 3). Deterministic."""
    rng = np.random.default_rng(scene.seed)
    img = _background(scene.place, rng)
    if scene.object is not None:
        cov = object_coverage(scene)
        mask = cov >= 0.5
        # 1-px dark outline (8-neighbour dilation of the mask minus the mask)
        pad = np.pad(mask, 1)
        dil = np.zeros_like(mask)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                dil |= pad[dy : dy + SIZE, dx : dx + SIZE]
        outline = dil & ~mask
        img[outline] = OUTLINE_RGB
        fill = np.array(COLOR_RGB[scene.color], np.float32)
        # a soft top-left highlight keeps the shape readable yet flat
        img[mask] = fill
        if scene.attribute == "burning":
            _draw_flames(img, dil, rng)
    if scene.style is not None:
        img = _apply_style(img, scene.style)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _draw_flames(img: np.ndarray, body: np.ndarray, rng: np.random.Generator) -> None:
    """Flame tongues rising from the top edge of the (outlined) object."""
    cols = np.where(body.any(axis=0))[0]
    phase = rng.uniform(0, 2 * math.pi)
    for x in cols:
        top = int(np.argmax(body[:, x]))
        h = 3 + int(round(3.5 * abs(math.sin(0.9 * x + phase))))
        for k in range(1, h + 1):
            y = top - k
            if y < 0:
                break
            t = k / h
            rgb = (255, 70 + 170 * t, 10 + 40 * t)  # red-orange at the base, yellow at the tips
            img[y, x] = rgb
        # the flames also lick the object's top edge
        if top + 1 < SIZE:
            img[top, x] = (255, 60, 0)


# ------------------------------------------------------------ scene sampling


def draw_object(rng: np.random.Generator, world: World = SHAPEWORLD) -> str | None:
    """A random object kind of ``world`` (None: no object), at the world's
    declared shares (:meth:`World.scene_shares`); one or two draws of ``rng``."""
    if world.object_per_mille is None:
        # the first world's draws, unchanged: its shipped data depend on them
        if rng.random() < world.p_no_object:
            return None
        return world.object_names[int(rng.integers(len(world.object_names)))]
    # one uniform draw placed on the cumulative per-mille table
    kinds = world.object_names
    edges = np.cumsum([world.object_per_mille[k] for k in kinds]) / 1000
    k = int(np.searchsorted(edges, rng.random(), side="right"))
    return kinds[k] if k < len(kinds) else None


def sample_scene(
    rng: np.random.Generator,
    *,
    object: str | None | bool = True,
    color: str | None = None,
    place: str | None = None,
    style: str | None | bool = True,
    attribute: str | None | bool = True,
    world: World = SHAPEWORLD,
) -> Scene:
    """A random scene. Pass a value to fix a factor; ``True`` means random
    (with the default shares of styled and burning scenes, and the world's
    shares of object kinds and object-less scenes)."""
    if object is True:
        object = draw_object(rng, world)
    if color is None and object is not None:
        color = COLORS[int(rng.integers(len(COLORS)))]
    if object is None:
        color = None
    if place is None:
        place = PLACE_NAMES[int(rng.integers(len(PLACE_NAMES)))]
    if style is True:
        style = STYLE_NAMES[int(rng.integers(len(STYLE_NAMES)))] if rng.random() < P_STYLE else None
    if attribute is True:
        attribute = "burning" if (object is not None and rng.random() < P_BURNING) else None
    if object is None:
        attribute = None
    size = float(rng.uniform(7.0, 10.0))
    x = float(rng.uniform(size + 1.0, SIZE - 1.0 - size))
    y = float(rng.uniform(size + 6.0, SIZE - 1.0 - size))
    rotation = float(rng.uniform(-15.0, 15.0))
    seed = int(rng.integers(2**31 - 1))
    return Scene(object, color, place, style, attribute, x, y, size, rotation, seed)


# -------------------------------------------------------------------- captions

# (color, object, place) triples never captioned together in training: the
# held-out prompts of the quality gate (4 per object, every colour and place).
HELDOUT_TRIPLES: tuple[tuple[str, str, str], ...] = SHAPEWORLD.heldout_triples()

_PREFIXES = ("a", "a", "a", "an image of a", "a photo of a", "a picture of a")
_STYLE_SUFFIX = (" in the style of {s}", " in the style of {s}", " by {s}", ", {s} style")


_HELDOUT_SETS: dict[str, frozenset] = {}


def _heldout_set(world: World) -> frozenset:
    if world.name not in _HELDOUT_SETS:
        _HELDOUT_SETS[world.name] = frozenset(world.heldout_triples())
    return _HELDOUT_SETS[world.name]


def _article(prefix: str, nxt: str) -> str:
    if prefix.endswith(" a") or prefix == "a":
        art = "an" if nxt[0] in "aeiou" else "a"
        return prefix[:-1] + art
    return prefix


def caption(scene: Scene, rng: np.random.Generator, *, allow_heldout: bool = False, world: World = SHAPEWORLD) -> str:
    """A training caption of a scene from one of several templates.

    The object, style and attribute are always named when present; colour
    and place are each left out now and then (the model then picks them).
    Synonyms replace the object's name in a share of captions. Unless
    ``allow_heldout``, a held-out (colour, object, place) triple is never
    named in full (the held-out triples of ``world``).
    """
    style_txt = ""
    if scene.style is not None:
        style_txt = _STYLE_SUFFIX[int(rng.integers(len(_STYLE_SUFFIX)))].format(s=scene.style)
    if scene.object is None:
        forms = ("the {p}", "the {p}", "{p}", "an image of the {p}", "a photo of the {p}")
        return forms[int(rng.integers(len(forms)))].format(p=scene.place) + style_txt

    name = scene.object
    if rng.random() < 0.2:
        syns = world.objects[name]
        name = syns[int(rng.integers(len(syns)))]
    say_color = rng.random() < 0.75
    say_place = rng.random() < 0.75
    if (
        not allow_heldout
        and say_color
        and say_place
        and (scene.color, scene.object, scene.place) in _heldout_set(world)
    ):
        if rng.random() < 0.5:
            say_color = False
        else:
            say_place = False
    burning = scene.attribute == "burning"
    fire_after = burning and rng.random() < 0.5
    words = []
    if burning and not fire_after:
        words.append("burning")
    if say_color:
        words.append(scene.color)
    words.append(name)
    if fire_after:
        words.append("on fire")
    body = " ".join(words)
    prefix = _PREFIXES[int(rng.integers(len(_PREFIXES)))]
    text = f"{_article(prefix, body)} {body}"
    if say_place:
        if rng.random() < 0.75:
            text += " " + place_phrase(scene.place)
        else:
            text += f" near the {scene.place}"
    return text + style_txt


def prompt_for(
    object: str | None,
    color: str | None = None,
    place: str | None = None,
    style: str | None = None,
    attribute: str | None = None,
) -> str:
    """The canonical prompt naming the given factors ('a red star on the grass')."""
    if object is None:
        text = f"the {place}" if place else "the grass"
    else:
        words = (["burning"] if attribute == "burning" else []) + ([color] if color else []) + [object]
        body = " ".join(words)
        text = f"{_article('a', body)} {body}"
        if place:
            text += " " + place_phrase(place)
    if style:
        text += f" in the style of {style}"
    return text


def parse_prompt(prompt: str, world: World = SHAPEWORLD) -> dict:
    """The factors a prompt names: keys object, color, place, style,
    attribute (only those named). Synonyms map to the canonical object of
    ``world``; a run of digits is a word of its own ("2", a synonym of the
    second world's "two")."""
    text = prompt.lower()
    words = re.findall(r"[a-z]+|[0-9]+", text)
    synonyms = world.synonym_map()
    out: dict = {}
    for w in words:
        if "object" not in out and (w in world.objects or w in synonyms):
            out["object"] = synonyms.get(w, w)
        elif "color" not in out and w in COLORS:
            out["color"] = w
        elif "place" not in out and w in PLACE_NAMES:
            out["place"] = w
        elif "style" not in out and w in {s.lower() for s in STYLE_NAMES}:
            out["style"] = next(s for s in STYLE_NAMES if s.lower() == w)
    for attr, phrases in ATTRIBUTES.items():
        if any(re.search(rf"\b{re.escape(p)}\b", text) for p in phrases):
            out["attribute"] = attr
    return out
