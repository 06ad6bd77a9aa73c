"""Zero-shot rank classification of the backbone on the held-out tasks (no training).

    python -m t0_recipes.zero_shot --preset tiny --data-dir ../shared/data --tasks rte cb copa wic wsc
"""

from __future__ import annotations

from collections.abc import Sequence

from t0_recipes.cli import base_parser, run


def main(argv: Sequence[str] | None = None) -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    run(args, method="zero_shot", make_adapt=lambda preset: None,
        count_params=lambda model: {"trainable": 0, "total": sum(p.numel() for p in model.parameters())},
        notes=["Zero-shot: the same model for every seed, so every seed has the same accuracy."])


if __name__ == "__main__":
    main()
