"""Exact "share of a count" arithmetic shared by the stages.

``floor(r * n)`` and ``ceil(alpha * C)`` in binary floating point can land
one off (``0.28 * 25 == 7.000000000000001`` so its ceiling is 8;
``0.29 * 100 == 28.999999999999996`` so its floor is 28). The fractions the
user types are decimal, so they are read as the exact decimal they print as
(``Fraction(repr(0.28)) == 7/25``) and the product is exact.
"""

from __future__ import annotations

import math
from fractions import Fraction


def exact_fraction(value: float) -> Fraction:
    """The decimal number ``value`` prints as, as an exact fraction."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    return Fraction(repr(float(value)))


def top_count(share: float, n: int) -> int:
    """``max(1, floor(share * n))`` computed exactly (the k of a top-k)."""
    if n < 1:
        raise ValueError(f"cannot take a share of {n} entries")
    return max(1, math.floor(exact_fraction(share) * n))
