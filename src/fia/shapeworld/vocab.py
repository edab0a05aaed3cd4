"""The factors of ShapeWorld and the words that name them.

Each family mirrors one of the paper's tasks:

* objects  -> Imagenette classes (each has a synonym, for generality tests)
* places   -> the ``<place>`` of the object prompts (backgrounds)
* colors   -> an object's fill colour
* styles   -> artists' styles (a whole-image texture, named like an artist)
* attributes -> explicit content (an overlay that can attach to any object)

Other modules (renderer, captions, prompt presets, evaluation) read these
lists; nothing else hard-codes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from fia.errors import FIAError

# canonical object name -> synonyms (used only for generalisation tests and
# in a share of training captions, so the model knows them)
OBJECTS: dict[str, tuple[str, ...]] = {
    "circle": ("disc",),
    "square": ("box",),
    "triangle": ("wedge",),
    "star": ("pentagram",),
    "heart": ("valentine",),
    "cross": ("plus",),
    "ring": ("donut",),
    "diamond": ("rhombus",),
    "crescent": ("moon",),
    "arrow": ("pointer",),
}
OBJECT_NAMES: tuple[str, ...] = tuple(OBJECTS)

# place -> the phrase that puts an object there ("a star on the grass")
PLACES: dict[str, str] = {
    "grass": "on the grass",
    "sand": "on the sand",
    "sky": "in the sky",
    "water": "in the water",
    "snow": "on the snow",
    "road": "on the road",
}
PLACE_NAMES: tuple[str, ...] = tuple(PLACES)

COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")

# artist-like name -> what the style does to the whole image
STYLES: dict[str, str] = {
    "Ovalli": "a dark oval vignette",
    "Strelka": "horizontal stripes",
    "Pointini": "a lattice of bright dots",
    "Mondrio": "a thick black grid",
    "Diagonov": "diagonal hatching",
}
STYLE_NAMES: tuple[str, ...] = tuple(STYLES)

# attribute -> caption words; "burning" draws flames on the object
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "burning": ("burning", "on fire"),
}
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)


def place_phrase(place: str) -> str:
    """'grass' -> 'on the grass'."""
    return PLACES[place]


def base_phrase(place: str) -> str:
    """The prompt for a place with no object: 'the grass'."""
    return f"the {place}"


# ------------------------------------------------------------------- worlds

# The second world's objects: the ten shapes, six letters, six digits and ten
# glyph icons. Letters and digits are named by their spoken names (a single
# word each, none shared with a caption template word) and take the bare
# character as their synonym.
SHAPEWORLD2_OBJECTS: dict[str, tuple[str, ...]] = {
    **OBJECTS,
    "aitch": ("h",),
    "kay": ("k",),
    "tee": ("t",),
    "ex": ("x",),
    "wye": ("y",),
    "em": ("m",),
    "two": ("2",),
    "three": ("3",),
    "four": ("4",),
    "five": ("5",),
    "seven": ("7",),
    "eight": ("8",),
    "house": ("hut",),
    "tree": ("pine",),
    "key": ("latchkey",),
    "fish": ("minnow",),
    "bell": ("chime",),
    "flag": ("banner",),
    "bolt": ("lightning",),
    "drop": ("droplet",),
    "hourglass": ("timer",),
    "mushroom": ("toadstool",),
}

# The long tail: per mille of all scenes, commonest first (150 per mille of
# scenes have no object, as in the first world). The shares follow a
# Zipf-Mandelbrot law, share(rank) = 100 * ((1 + b) / (rank + b)) ** s per
# mille with b = 19.55 and s = 3.26 (fitted so that the commonest kind is in
# 10 % of scenes, the rarest in 0.5 % and the objects in 85 %), rounded to
# tenths of a percent. Each family has common and rare members.
SHAPEWORLD2_OBJECT_PER_MILLE: dict[str, int] = {
    "circle": 100, "house": 87, "square": 75, "two": 64, "star": 56, "tree": 49,
    "aitch": 43, "triangle": 38, "seven": 34, "heart": 31, "key": 27, "ex": 25,
    "ring": 22, "four": 20, "fish": 18, "cross": 17, "tee": 15, "bell": 14,
    "three": 13, "diamond": 12, "flag": 11, "kay": 10, "eight": 9, "crescent": 9,
    "bolt": 8, "wye": 7, "drop": 7, "five": 7, "arrow": 6, "em": 6,
    "hourglass": 5, "mushroom": 5,
}  # fmt: skip

# Kinds the renderer draws that no world names: renders of them test that a
# judge answers "none of the kinds" for an object it does not know.
UNKNOWN_KINDS: tuple[str, ...] = ("zed", "cup")


@dataclass(frozen=True)
class World:
    """A ShapeWorld vocabulary: its object kinds, their synonyms and how often
    each appears. Places, colours, styles and the attribute are shared by
    every world.

    ``object_per_mille`` is None for uniform kinds (the first world: an
    object-less scene with probability ``p_no_object``, else a uniform kind,
    drawn exactly as that world always has been); otherwise it gives each
    kind's share of all scenes in per mille, and the object-less scenes take
    the rest of the thousand.
    """

    name: str
    objects: dict[str, tuple[str, ...]]
    object_per_mille: dict[str, int] | None = None
    p_no_object: float = 0.15

    def __post_init__(self) -> None:
        if self.object_per_mille is not None:
            if set(self.object_per_mille) != set(self.objects):
                raise ValueError(f"world {self.name}: the frequency table must name every object once")
            if sum(self.object_per_mille.values()) > 1000:
                raise ValueError(f"world {self.name}: the object shares exceed 1000 per mille")

    @property
    def object_names(self) -> tuple[str, ...]:
        return tuple(self.objects)

    def scene_shares(self) -> dict[str | None, float]:
        """The declared probability of each object kind in a random scene
        (``None``: no object)."""
        if self.object_per_mille is None:
            each = (1 - self.p_no_object) / len(self.objects)
            return {None: self.p_no_object, **{name: each for name in self.objects}}
        shares: dict[str | None, float] = {name: self.object_per_mille[name] / 1000 for name in self.objects}
        return {None: 1 - sum(shares.values()), **shares}

    def heldout_triples(self) -> tuple[tuple[str, str, str], ...]:
        """(colour, object, place) triples never captioned together in
        training: the held-out prompts of the quality gate (4 per object,
        every colour and place)."""
        return tuple(
            (COLORS[(3 * i + k) % len(COLORS)], obj, PLACE_NAMES[(i + 2 * k + (k // 2)) % len(PLACE_NAMES)])
            for i, obj in enumerate(self.objects)
            for k in range(4)
        )

    def synonym_map(self) -> dict[str, str]:
        """Synonym -> canonical object name."""
        return {syn: name for name, syns in self.objects.items() for syn in syns}


SHAPEWORLD = World("shapeworld", OBJECTS)
SHAPEWORLD2 = World("shapeworld2", SHAPEWORLD2_OBJECTS, SHAPEWORLD2_OBJECT_PER_MILLE)
WORLDS: dict[str, World] = {w.name: w for w in (SHAPEWORLD, SHAPEWORLD2)}


def get_world(name: str | World) -> World:
    """The world of that name (a World passes through)."""
    if isinstance(name, World):
        return name
    if name not in WORLDS:
        raise FIAError(f"unknown ShapeWorld world {name!r}: choose one of {', '.join(WORLDS)}")
    return WORLDS[name]
