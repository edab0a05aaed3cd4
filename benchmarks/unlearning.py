"""The side-by-side benchmark on ShapeWorld (see :mod:`fia.bench`): ``fia bench`` from a checkout.

    python benchmarks/unlearning.py [--quick] [--methods fia,uce] [--out benchmarks/results] [--merge OLD.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

from fia.cli import main

if __name__ == "__main__":
    main(["bench", "--out", str(Path(__file__).resolve().parent / "results"), *sys.argv[1:]])
