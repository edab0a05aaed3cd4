"""The seeding rule of the ShapeWorld suites, and why their splits never share a seed.

Every generated image starts from the noise of its seed, so two measurements
are independent only if they use different seeds. A ShapeWorld suite cuts its
prompts into *blocks* (the prompts of one concept, the synonyms of one erased
object, the quality prompts) and gives image ``j`` of prompt ``k`` of block
``offset`` the seed

    seed = seed_base + 1000 * offset + 10 * k + j

With ``0 <= j < 10``, ``0 <= k < 100`` and ``0 <= offset < 1000`` the number
``1000 * offset + 10 * k + j`` is written with the digits (offset, k, j) of a
mixed-radix number, so two different (offset, k, j) never give the same seed:
blocks with different offsets are disjoint. All the seeds of one
``seed_base`` then lie in ``[seed_base, seed_base + SPLIT_SEED_SPAN)``, so two
splits whose ``seed_base`` differ by at least ``SPLIT_SEED_SPAN`` (1,000,000)
never share a seed either; the benchmark tunes on the split at 1,000,000 and
measures on the one at 0.

The blocks of a suite: concept ``i`` (erased first, then kept) at offset ``i``,
the synonyms of erased object ``i`` at ``SYNONYM_OFFSET + i``, the held-out
quality prompts at ``QUALITY_OFFSET`` and the place-only quality prompts at
``PLACE_QUALITY_OFFSET``; a quality prompt with more than ten images takes
its images 10..19 from the next block, and so on, for at most
``QUALITY_BLOCKS`` blocks (100 images per prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

from fia.errors import FIAError

MAX_IMAGES_PER_PROMPT = 10  # j < 10: the last digit
MAX_PROMPTS_PER_BLOCK = 100  # k < 100: the next two digits
MAX_BLOCKS = 1000  # offset < 1000: the digits above
SPLIT_SEED_SPAN = 1000 * MAX_BLOCKS  # the width of one split's seed range

# Offsets of the blocks every ShapeWorld suite uses (concept i has offset i;
# at most 10 objects plus 10 kept ones stay below the synonyms' offset).
SYNONYM_OFFSET = 20
QUALITY_OFFSET = 50
PLACE_QUALITY_OFFSET = 60
# a quality prompt's images fill up to this many blocks of ten seeds, from its
# block's offset on (QUALITY_OFFSET .. 59, PLACE_QUALITY_OFFSET .. 69), so no
# quality image shares a block with another kind of prompt
QUALITY_BLOCKS = 10


@dataclass(frozen=True)
class BlockOffsets:
    """Where a suite's synonym and quality blocks start (concept ``i`` is block ``i``).

    The first world's ten kinds use the offsets above. A world with more
    kinds (the second world's 32) has up to 32 concept blocks, so its
    synonyms start at 100, and its held-out triples (128: more than the 100
    prompts of one block) take a second run of ``QUALITY_BLOCKS`` blocks for
    triples 100 and up: quality at 200..219, places at 300..309.
    """

    synonym: int
    quality: int
    place_quality: int


def quality_block(first: int, prompt_index: int, image_index: int) -> tuple[int, int, int]:
    """(offset, prompt index, image index) of a quality image: prompts
    ``100 * r + k`` use run ``r`` of ``QUALITY_BLOCKS`` blocks from ``first``,
    image ``m`` the ``m // 10``-th block of that run."""
    run, k = divmod(prompt_index, MAX_PROMPTS_PER_BLOCK)
    block, j = divmod(image_index, MAX_IMAGES_PER_PROMPT)
    return first + QUALITY_BLOCKS * run + block, k, j


FIRST_WORLD_OFFSETS = BlockOffsets(SYNONYM_OFFSET, QUALITY_OFFSET, PLACE_QUALITY_OFFSET)
WIDE_WORLD_OFFSETS = BlockOffsets(100, 200, 300)


def offsets_for(n_kinds: int) -> BlockOffsets:
    """The block offsets of a world with ``n_kinds`` object kinds."""
    if n_kinds <= 10:
        return FIRST_WORLD_OFFSETS
    if n_kinds <= 100:
        return WIDE_WORLD_OFFSETS
    raise FIAError(f"a ShapeWorld world with {n_kinds} kinds has more concept blocks than the seeding rule keeps apart")


def split_seed(seed_base: int, offset: int, prompt_index: int, image_index: int) -> int:
    """The seed of image ``image_index`` of prompt ``prompt_index`` in block ``offset``.

    ``seed_base + 1000 * offset + 10 * prompt_index + image_index``; see the
    module's text for why different blocks and splits never share a seed.
    Raises :class:`FIAError` when an index is outside the range that keeps
    them apart (at most 10 images per prompt, 100 prompts per block, 1000
    blocks).
    """
    for name, value, limit, fix in (
        ("image_index", image_index, MAX_IMAGES_PER_PROMPT, "draw at most 10 images per prompt"),
        ("prompt_index", prompt_index, MAX_PROMPTS_PER_BLOCK, "use at most 100 prompts per concept"),
        ("offset", offset, MAX_BLOCKS, "use a block offset below 1000"),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
            raise FIAError(
                f"{name} must be an integer in [0, {limit}) so that evaluation seeds stay disjoint, "
                f"got {value!r}; {fix}"
            )
    return seed_base + 1000 * offset + 10 * prompt_index + image_index


def check_count(name: str, value: int, limit: int) -> None:
    """Raise :class:`FIAError` unless ``value`` is an integer in ``[1, limit]``.

    For the sizes of a suite (images per prompt, prompts per concept) whose
    bounds keep the seeds of :func:`split_seed` apart.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise FIAError(
            f"{name} must be an integer from 1 to {limit}, got {value!r}; more would make "
            "two evaluation images share a seed (see fia.evaluate.suites.seeds)"
        )
