"""TensorPoly-I (routing over the tensor-rank components of a TLoRA) on the T0 held-out tasks.

    python t0_recipes/tensorpoly_i.py --preset tiny --data-dir ../shared/data --output-dir runs/tensorpoly_i
    python -m t0_recipes.tensorpoly_i --preset tiny --data-dir ../shared/data --mode routing_only
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a path: import t0_recipes from the repository root, not from this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from t0_recipes.pipeline import main  # noqa: E402

if __name__ == "__main__":
    main("tensorpoly_i")
