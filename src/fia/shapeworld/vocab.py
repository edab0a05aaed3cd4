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
