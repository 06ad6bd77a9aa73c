"""MHR (Poly routed per head) on the T0 held-out tasks.

    python t0_recipes/mhr.py --preset tiny --data-dir ../shared/data --output-dir runs/mhr
    python -m t0_recipes.mhr --preset tiny --data-dir ../shared/data --mode routing_only
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a path: import t0_recipes from the repository root, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from t0_recipes.pipeline import main  # noqa: E402

if __name__ == "__main__":
    main("mhr")
