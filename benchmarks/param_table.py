"""Do our adapters have the sizes the paper reports? Every row of its Tables 2 and 4, counted.

T0-3B's architecture (T5 v1.1 LM-adapted XL) is built on the ``meta`` device (no weights, no
download, no memory), each method is injected with the paper's settings and
`tensoradapt.count_parameters` counts the result. Nothing is hard-coded but the paper's
figures, which sit beside our counts with the relative difference:

* 313 training tasks (T0's templates-as-tasks), 432 adapted linears;
* LoRA rank 1 for LoRA / Poly / MHR, LoRA rank 16 for the TLoRA-based methods;
* 8 skills for Poly / MHR, 64 MHR heads; TensorPoly-I / -II at ``(R, N)`` in (8, 2), (20, 2), (8, 4);
* ``multitask`` rows: every parameter of multi-task pre-training, the 313-row routing included;
  ``routing_only`` rows: one task's routing row (what few-shot "z" adaptation trains).

T-REX rows (rank-one experts, ``r1 = 4`` down and ``r2 = 8`` up vectors) are added on T0-3B and on a
LLaMA-2-7B-shaped model as soon as ``tensoradapt`` can build ``method='trex'``, each next to a plain
LoRA of rank ``r1 * r2`` (as many rank-one experts); see `trex_rows`.

Usage::

    python benchmarks/param_table.py                       # writes benchmarks/results/param_table.{json,md}
    python benchmarks/param_table.py --json /tmp/table.json
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tensoradapt  # noqa: E402
from common import RESULTS_DIR, markdown_table, write_outputs  # noqa: E402
from tensoradapt import AdapterConfig  # noqa: E402

#: T0's training mixture as the paper counts it: one task per promptsource template.
N_TASKS = 313
#: The T-Few / mttl convention (PAPER_FACTS section 1): 432 linears on T0-3B.
T0_TARGETS = r".*(SelfAttention|EncDecAttention|DenseReluDense)\.(q|k|v|o|wi_0|wi_1|wo)"
#: T-REX's released setting: r1 down vectors, r2 up vectors, r1 * r2 rank-one experts.
TREX_DOWN, TREX_UP = 4, 8


def t0_3b(device: str = "meta") -> torch.nn.Module:
    """T0-3B's architecture on ``device`` (``meta``: no weights, no memory): 2.78e9 parameters."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=32128,
        d_model=2048,
        d_kv=64,
        d_ff=5120,
        num_layers=24,
        num_decoder_layers=24,
        num_heads=32,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    with torch.device(device):
        return T5ForConditionalGeneration(config)


def llama_2_7b(device: str = "meta") -> torch.nn.Module:
    """A LLaMA-2-7B-shaped ``LlamaForCausalLM`` on ``device``: hidden 4096, MLP 11008, 32 x 32 heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    )
    with torch.device(device):
        return LlamaForCausalLM(config)


MODELS = {"t0-3b": t0_3b, "llama-2-7b": llama_2_7b}


@dataclass(frozen=True)
class Row:
    """One row of the table: a method, its settings, and the paper's figure (``None``: not in the paper).

    ``mode``: ``multitask`` (all pre-training parameters, routing over ``N_TASKS``) or
    ``routing_only`` (one task's routing row). ``table`` is the paper's table number. ``note`` is a
    format string over the counted record (``{params}``, ``{modules}``, ``{routing}``).
    """

    method: str
    mode: str
    config: dict
    paper: float | None
    table: str | None
    rank: int | None = None
    order: int | None = None
    note: str | None = None
    model: str = "t0-3b"
    extra: dict = field(default_factory=dict)


def _tensor(method: str, rank: int, order: int, mode: str, paper: float, table: str, note: str | None = None) -> Row:
    config = dict(method=method, lora_rank=16, tensor_rank=rank, order=order, n_tasks=N_TASKS)
    return Row(method, mode, config, paper, table, rank=rank, order=order, note=note)


#: The rows of the paper's Table 2 (multi-task pre-training) and Table 4 (routing-only adaptation).
PAPER_ROWS: tuple[Row, ...] = (
    Row("lora", "multitask", dict(method="lora", lora_rank=1), 2.2e6, "2"),
    Row("tlora", "multitask", dict(method="tlora", lora_rank=16, tensor_rank=1, order=2), 1.4e6, "2", rank=1, order=2),
    Row(
        "poly",
        "multitask",
        dict(method="poly", lora_rank=1, n_skills=8, n_tasks=N_TASKS),
        17e6,
        "2",
        note="the paper's 17M is the skills alone ({modules:,}) rounded down; with the 313 x 8 routing per layer "
        "the count is {params:,}",
    ),
    _tensor("tensorpoly_i", 8, 2, "multitask", 12.2e6, "2"),
    _tensor(
        "tensorpoly_i",
        20,
        2,
        "multitask",
        27.8e6,
        "2",
        note="the paper's 27.8M counts the modules only ({modules:,}) and no routing; with the 313 x 20 routing "
        "per layer the count is {params:,}",
    ),
    _tensor("tensorpoly_i", 8, 4, "multitask", 4.3e6, "2"),
    _tensor("tensorpoly_ii", 8, 2, "multitask", 13.3e6, "2"),
    _tensor("tensorpoly_ii", 20, 2, "multitask", 33.2e6, "2"),
    _tensor("tensorpoly_ii", 8, 4, "multitask", 7.6e6, "2"),
    Row("poly", "routing_only", dict(method="poly", lora_rank=1, n_skills=8, n_tasks=1), 3.5e3, "4"),
    Row("mhr", "routing_only", dict(method="mhr", lora_rank=1, n_skills=8, n_heads=64, n_tasks=1), 220e3, "4"),
    Row(
        "tensorpoly_i",
        "routing_only",
        dict(method="tensorpoly_i", lora_rank=16, tensor_rank=20, order=2, n_tasks=1),
        8.6e3,
        "4",
        rank=20,
        order=2,
    ),
    Row(
        "tensorpoly_ii",
        "routing_only",
        dict(method="tensorpoly_ii", lora_rank=16, tensor_rank=20, order=2, n_tasks=1),
        17.3e3,
        "4",
        rank=20,
        order=2,
    ),
)

#: Rows the paper does not print, for completeness: MHR's pre-training size (skills + 313 x 64 x 8 routing).
EXTRA_ROWS: tuple[Row, ...] = (
    Row(
        "mhr",
        "multitask",
        dict(method="mhr", lora_rank=1, n_skills=8, n_heads=64, n_tasks=N_TASKS),
        None,
        None,
        note="not in the paper's tables: the 313 x 64 x 8 routing per layer ({routing:,}) outweighs the skills "
        "({modules:,})",
    ),
)


def trex_rows() -> tuple[Row, ...]:
    """T-REX (``r1 = 4``, ``r2 = 8``: 32 rank-one experts) and a plain LoRA of rank 32, on T0-3B and LLaMA-2-7B.

    Extension point: more T-REX settings go here. ``extra["experts"]`` holds the number of
    rank-one experts a token can mix (``r1 * r2`` for T-REX, the rank for LoRA).
    """
    experts = TREX_DOWN * TREX_UP
    rows = []
    for model in MODELS:
        rows.append(
            Row(
                "trex",
                "multitask",
                dict(method="trex", trex_down=TREX_DOWN, trex_up=TREX_UP),
                None,
                None,
                model=model,
                note=f"T-REX seed: {TREX_DOWN} + {TREX_UP} vectors per layer mix into {experts} rank-one experts "
                f"(token router included); compare with the LoRA rank-{experts} row",
                extra={"experts": experts, "trex_down": TREX_DOWN, "trex_up": TREX_UP},
            )
        )
        rows.append(
            Row(
                "lora",
                "multitask",
                dict(method="lora", lora_rank=experts),
                None,
                None,
                model=model,
                note=f"baseline for T-REX: as many rank-one components ({experts}) as T-REX has experts",
                extra={"experts": experts, "lora_rank": experts},
            )
        )
    return tuple(rows)


def all_rows(*, include_trex: bool = True) -> tuple[Row, ...]:
    """The paper's rows, the extra rows, and (``include_trex``) the T-REX rows."""
    return PAPER_ROWS + EXTRA_ROWS + (trex_rows() if include_trex else ())


def count_row(row: Row) -> dict:
    """Inject ``row``'s method into its model on ``meta`` and count; returns the JSON record."""
    model = MODELS[row.model]()
    config = dict(row.config)
    if row.model == "t0-3b":
        config.setdefault("target_modules", T0_TARGETS)
    tensoradapt.inject(model, AdapterConfig(**config))
    counts = tensoradapt.count_parameters(model)
    if row.mode == "routing_only":
        if config.get("n_tasks", 1) != 1:
            raise ValueError(f"a routing_only row counts one task's routing; got n_tasks={config['n_tasks']}")
        params = counts["routing"]
    else:
        params = counts["adapter"]
    record = {
        "method": row.method,
        "rank": row.rank,
        "order": row.order,
        "mode": row.mode,
        "params": params,
        "paper": row.paper,
        "relative_difference": None if row.paper is None else (params - row.paper) / row.paper,
        "modules": counts["modules"],
        "routing": counts["routing"],
        "adapted_linears": len(counts["by_layer"]),
        "model": row.model,
        "base_params": counts["total"] - counts["adapter"],
        "table": row.table,
        "settings": {key: value for key, value in config.items() if key not in ("method", "target_modules")},
    }
    record.update(row.extra)
    if row.note:
        record["note"] = row.note.format(**record)
    return record


def build_table(rows: tuple[Row, ...] | None = None) -> list[dict]:
    """Count every row (all rows by default)."""
    return [count_row(row) for row in (all_rows() if rows is None else rows)]


def _label(record: dict) -> str:
    label = record["method"]
    if record["rank"] is not None:
        label += f" R={record['rank']} N={record['order']}"
    if record["method"] in ("lora",) and record["settings"].get("lora_rank", 1) != 1:
        label += f" r={record['settings']['lora_rank']}"
    if record["method"] == "trex":
        label += f" r1={record['trex_down']} r2={record['trex_up']}"
    return label


def _paper(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


def markdown(records: list[dict]) -> str:
    """The summary: one table for the paper's rows, one for the rest, and the notes."""
    paper = [r for r in records if r["paper"] is not None]
    others = [r for r in records if r["paper"] is None]
    lines = [
        "# Parameter counts on T0-3B: ours vs the paper's Tables 2 and 4",
        "",
        f"T0-3B built on the `meta` device, {paper[0]['adapted_linears'] if paper else 432} adapted linears "
        f"(the T-Few convention), {N_TASKS} tasks; counts from `tensoradapt.count_parameters`. "
        "Reproduce with `python benchmarks/param_table.py`.",
        "",
        markdown_table(
            ["table", "method", "mode", "ours", "modules", "routing", "paper", "ours / paper - 1"],
            [
                [
                    r["table"],
                    _label(r),
                    r["mode"],
                    f"{r['params']:,}",
                    f"{r['modules']:,}" if r["mode"] == "multitask" else "-",
                    f"{r['routing']:,}",
                    _paper(r["paper"]),
                    f"{100 * r['relative_difference']:+.1f}%",
                ]
                for r in paper
            ],
            align=["l", "l", "l", "r", "r", "r", "r", "r"],
        ),
    ]
    notes = [f"- {_label(r)} ({r['mode']}): {r['note']}." for r in paper if r.get("note")]
    if notes:
        lines += ["", "Where the paper's figure is not what its own settings give:", "", *notes]
    if others:
        lines += [
            "",
            "## Rows the paper does not print",
            "",
            markdown_table(
                ["model", "method", "mode", "params", "rank-one experts", "note"],
                [
                    [r["model"], _label(r), r["mode"], f"{r['params']:,}", r.get("experts", "-"), r.get("note", "")]
                    for r in others
                ],
                align=["l", "l", "l", "r", "r", "l"],
            ),
        ]
    if not any(r["method"] == "trex" for r in records):
        lines += ["", "T-REX rows appear here once `tensoradapt` can build `method='trex'` (re-run the script)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "param_table.json")
    parser.add_argument("--no-trex", action="store_true", help="skip the T-REX rows")
    parser.add_argument("--quick", action="store_true", help="a few rows only (smoke tests)")
    args = parser.parse_args(argv)
    rows = all_rows(include_trex=not args.no_trex)
    if args.quick:
        rows = tuple(row for row in rows if row.method in ("lora", "tensorpoly_ii"))[:3] + (PAPER_ROWS[-1],)
    records = build_table(rows)
    text = markdown(records)
    print(text)
    write_outputs(args.json, records, text)
    return records


if __name__ == "__main__":
    main()
