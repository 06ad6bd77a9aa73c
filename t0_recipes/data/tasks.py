"""The T0 tasks: where their rows live, how many shots, and the figures to compare with.

The protocol is T-Few's (Liu et al., 2022), reused by the TensorPoly paper: eleven held-out
tasks, few-shot training subsets drawn with five seeds, rank-classification accuracy on the
evaluation split, the median over seeds per task and the mean over tasks.

Three groups share one registry (`TASKS`):

* `HELD_OUT_TASKS`: the eleven evaluated tasks (``t0_fewshot`` / ``t0_validation``);
* `TRAINING_TASKS`: fifteen T0-style pre-training tasks whose rows are in
  ``t0_train/<train_dir>/train.jsonl`` (sentiment, topic, paraphrase, multiple-choice QA);
* `MIXTURE_TASKS`: boolq and sst2, the stand-in mixture pooled from ``t0_fewshot`` when a data
  folder has no ``t0_train``.

Everything here is data: no I/O, no model code.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "FEWSHOT_SEEDS",
    "HELD_OUT",
    "HELD_OUT_TASKS",
    "MIXTURE_TASKS",
    "TRAINING",
    "TRAINING_TASKS",
    "PAPER_TABLE1",
    "PAPER_TABLE1_LABELS",
    "REFERENCE_ROW",
    "TABLE1_COLUMNS",
    "TASKS",
    "Task",
    "get_task",
]

#: The five few-shot subsets of every held-out task (T-Few's seeds, in its order).
FEWSHOT_SEEDS: tuple[int, ...] = (42, 1024, 0, 1, 32)


@dataclass(frozen=True)
class Task:
    """One dataset the recipes read, with where to find it locally and on the hub.

    Attributes:
        name: the registry key (``"rte"``, ``"anli_r1"``, ...); also the template family.
        column: the paper's Table-1 column header (``"RTE"``, ``"ANLI1"``, ...); a short display
            name for a pre-training task.
        hub_id: dataset id for ``datasets.load_dataset``.
        hub_config: its configuration name, or ``None``.
        eval_split: the hub split the accuracy is measured on.
        train_split: the hub split the few-shot subsets are drawn from.
        k: few-shot subset size (training examples per seed).
        n_choices: answer choices of every example of the task.
        local_dir: folder name under ``t0_fewshot/`` / ``t0_validation/``.
        held_out: ``True`` for the eleven evaluated tasks; ``False`` for pre-training tasks,
            which never enter an evaluation and held-out ones never enter the mixture.
        note: anything a reader of the registry should know (access terms, quirks).
        train_dir: folder under ``t0_train/`` whose ``train.jsonl`` holds the task's
            pre-training rows; ``None`` for a task without one.
    """

    name: str
    column: str
    hub_id: str
    hub_config: str | None
    eval_split: str
    train_split: str
    k: int
    n_choices: int
    local_dir: str
    held_out: bool = True
    note: str = ""
    train_dir: str | None = None

    def __post_init__(self) -> None:
        if self.held_out and self.train_dir is not None:
            raise ValueError(f"task {self.name!r}: a held-out task cannot have train_dir={self.train_dir!r}")

    @property
    def local_shots_dir(self) -> str:
        """``"<local_dir>/<k>_shot"``, the few-shot folder under ``t0_fewshot/``."""
        return f"{self.local_dir}/{self.k}_shot"


# Hub ids: the namespaced copies that load as parquet with `datasets` >= 3 (no loading
# scripts). Field formats are the classic ones (`super_glue/<task>`, `anli`, ...).
_SUPER_GLUE = "aps/super_glue"

HELD_OUT_TASKS: tuple[Task, ...] = (
    Task("rte", "RTE", _SUPER_GLUE, "rte", "validation", "train", 32, 2, "rte"),
    Task("cb", "CB", _SUPER_GLUE, "cb", "validation", "train", 32, 3, "cb"),
    Task("anli_r1", "ANLI1", "facebook/anli", None, "test_r1", "train_r1", 50, 3, "anli-r1",
         note="mttl used 32 shots; T-Few and this registry use 50"),
    Task("anli_r2", "ANLI2", "facebook/anli", None, "test_r2", "train_r2", 50, 3, "anli-r2",
         note="mttl used 32 shots; T-Few and this registry use 50"),
    Task("anli_r3", "ANLI3", "facebook/anli", None, "test_r3", "train_r3", 50, 3, "anli-r3",
         note="mttl used 32 shots; T-Few and this registry use 50"),
    Task("copa", "COPA", _SUPER_GLUE, "copa", "validation", "train", 32, 2, "copa"),
    Task("hellaswag", "H-SWAG", "Rowan/hellaswag", None, "validation", "train", 20, 4, "h-swag"),
    Task("story_cloze", "Story", "LSDSem/story_cloze", "2016", "test", "validation", 70, 2, "story_cloze",
         note="the hub copy needs a manual download (data_dir) under the dataset's access terms; "
              "few-shot rows come from the 2016 validation split"),
    Task("wsc", "WSC", _SUPER_GLUE, "wsc.fixed", "validation", "train", 32, 2, "wsc"),
    Task("winogrande", "Wino", "allenai/winogrande", "winogrande_xl", "validation", "train", 50, 2, "winogrande"),
    Task("wic", "WiC", _SUPER_GLUE, "wic", "validation", "train", 32, 2, "wic"),
)

_SST2 = Task("sst2", "SST-2", "nyu-mll/glue", "sst2", "validation", "train", 16, 2, "sst2", held_out=False,
             note="T-Few's folder is '16_shot' but holds 16 rows per class (32)", train_dir="sst2")

#: Stand-ins for a multi-task pre-training mixture when the data folder has no ``t0_train``
#: (their rows are pooled from ``t0_fewshot``; never evaluated as held-out tasks).
MIXTURE_TASKS: tuple[Task, ...] = (
    Task("boolq", "BoolQ", _SUPER_GLUE, "boolq", "validation", "train", 32, 2, "boolq", held_out=False),
    _SST2,
)


def _training(name: str, column: str, hub_id: str, hub_config: str | None, split: str, n_choices: int,
              note: str = "") -> Task:
    """A ``t0_train`` task: no few-shot subsets (``k=0``), rows in ``t0_train/<name>/train.jsonl``.

    ``split`` is the hub split the local rows mirror (see ``t0_train/README.md``); the hub ids
    name the field format, the local mixture never downloads them.
    """
    return Task(name, column, hub_id, hub_config, split, split, 0, n_choices, name, held_out=False, note=note,
                train_dir=name)


#: The pre-training tasks of ``t0_train`` (T0's clusters that the data folder holds). Their
#: ``n_choices`` is that of every row, except ARC (3 to 5 options; 4 in most rows).
TRAINING_TASKS: tuple[Task, ...] = (
    _training("rotten_tomatoes", "RT", "cornell-movie-review-data/rotten_tomatoes", None, "train", 2),
    _training("imdb", "IMDB", "stanfordnlp/imdb", None, "train", 2),
    _SST2,
    _training("ag_news", "AG", "fancyzhx/ag_news", None, "test", 4,
              note="the local rows are the hub's test split (the train file was too large to mirror)"),
    _training("trec", "TREC", "CogComp/trec", None, "train", 6, note="coarse_label (6 classes) is the answer"),
    _training("mrpc", "MRPC", "nyu-mll/glue", "mrpc", "train", 2),
    _training("paws", "PAWS", "google-research-datasets/paws", "labeled_final", "validation", 2,
              note="the local rows are the hub's validation split"),
    _training("dream", "DREAM", "dataset-org/dream", None, "train", 3),
    _training("cos_e", "CoS-E", "Salesforce/cos_e", "v1.0", "train", 3,
              note="v1.0 (3 choices); T0 trained on v1.11 (5 choices)"),
    _training("cosmos_qa", "CosmosQA", "allenai/cosmos_qa", None, "validation", 4,
              note="the local rows are the hub's validation split"),
    _training("piqa", "PIQA", "ybisk/piqa", None, "validation", 2,
              note="the local rows are the hub's validation split"),
    _training("arc_easy", "ARC-e", "allenai/ai2_arc", "ARC-Easy", "train", 4, note="3 to 5 choices; 4 in most rows"),
    _training("arc_challenge", "ARC-c", "allenai/ai2_arc", "ARC-Challenge", "train", 4,
              note="3 to 5 choices; 4 in most rows"),
    _training("openbookqa", "OBQA", "allenai/openbookqa", "main", "train", 4),
    _training("mc_taco", "MC-TACO", "CogComp/mc_taco", None, "validation", 2,
              note="no train split on the hub; the local rows are its validation split"),
)

#: Every task by name.
TASKS: dict[str, Task] = {task.name: task for task in HELD_OUT_TASKS + TRAINING_TASKS + MIXTURE_TASKS}
#: The pre-training task names of ``t0_train``, in registry order.
TRAINING: tuple[str, ...] = tuple(task.name for task in TRAINING_TASKS)
#: The eleven held-out task names, in the paper's Table-1 column order.
HELD_OUT: tuple[str, ...] = tuple(task.name for task in HELD_OUT_TASKS)
#: Table-1 column headers, in order (the mean column ``"ACC"`` comes last).
TABLE1_COLUMNS: tuple[str, ...] = tuple(task.column for task in HELD_OUT_TASKS)


def get_task(name: str) -> Task:
    """The registry entry for ``name``; accepts the local folder names too (``"h-swag"``, ``"anli-r1"``)."""
    if name in TASKS:
        return TASKS[name]
    for task in TASKS.values():
        if name in (task.local_dir, task.train_dir) or task.column.lower() == name.lower():
            return task
    raise ValueError(f"task={name!r} is unknown; choose one of {sorted(TASKS)}")


def _row(*values: float) -> dict[str, float]:
    """Eleven per-task accuracies in `TABLE1_COLUMNS` order, then the paper's ``ACC`` mean."""
    if len(values) != len(HELD_OUT) + 1:
        raise ValueError(f"a Table-1 row needs {len(HELD_OUT) + 1} values, got {len(values)}")
    row = dict(zip(HELD_OUT, values[:-1]))
    row["mean"] = values[-1]
    return row


# Source: the TensorPoly paper (seeds/000_*), Table 1, "mean downstream accuracy for 11
# held-out tasks in the T0 benchmark" (T0-3B backbone, accuracy in %, median over the five
# few-shot seeds). Column order: RTE, CB, ANLI1, ANLI2, ANLI3, COPA, H-SWAG, Story, WSC,
# Wino, WiC, ACC. Rows without pre-training are quoted by the paper from T-Few.
# The mean of the eleven figures matches ACC within rounding for every row except
# FishMask (0.02%) (59.2 computed, 59.0 printed).
PAPER_TABLE1: dict[str, dict[str, float]] = {
    # --- baselines, no multi-task pre-training (from T-Few) ---
    "full_ft": _row(79.8, 87.5, 46.6, 41.3, 40.0, 81.0, 46.4, 93.8, 65.4, 56.5, 57.7, 63.3),
    "bitfit": _row(72.2, 57.1, 36.5, 35.3, 36.6, 75.0, 29.5, 88.6, 61.5, 56.6, 51.7, 54.6),
    "layernorm": _row(71.8, 57.1, 36.5, 35.1, 36.3, 76.0, 29.6, 88.7, 63.5, 49.4, 52.2, 54.2),
    "adapter": _row(76.2, 87.5, 45.1, 40.4, 35.3, 84.0, 41.9, 91.7, 65.4, 54.7, 55.5, 61.6),
    "compacter": _row(75.8, 82.1, 40.8, 37.4, 35.8, 84.0, 46.4, 93.5, 64.4, 55.5, 55.2, 61.0),
    "compacter_pp": _row(76.9, 82.1, 41.7, 38.3, 36.9, 86.0, 46.3, 93.5, 65.4, 55.1, 54.1, 61.5),
    "prompt_10": _row(52.7, 66.1, 34.2, 33.5, 33.5, 67.0, 29.9, 84.2, 54.8, 51.9, 51.6, 50.9),
    "prompt_100": _row(48.0, 53.6, 33.4, 33.8, 33.3, 60.0, 26.8, 74.0, 60.6, 51.1, 50.0, 47.7),
    "prefix_tuning": _row(68.6, 84.0, 43.3, 37.5, 36.5, 71.0, 42.1, 90.2, 56.7, 52.0, 54.2, 57.8),
    "fishmask_0.2": _row(76.9, 83.9, 43.7, 39.7, 37.2, 82.0, 44.1, 94.2, 63.5, 54.5, 52.5, 61.1),
    "fishmask_0.02": _row(75.5, 76.8, 39.9, 38.1, 36.2, 84.0, 38.2, 93.6, 61.5, 53.9, 53.5, 59.0),
    "said": _row(69.0, 80.4, 40.4, 35.4, 35.5, 77.0, 36.7, 89.3, 61.5, 52.7, 55.0, 57.5),
    "lora_no_pretrain": _row(78.3, 85.7, 45.1, 41.0, 39.5, 88.0, 47.1, 93.6, 60.6, 56.8, 55.2, 62.8),
    # The row's label is lost in the seed text; its figures are T0-3B + (IA)3 of T-Few
    # (the same numbers as PAPER_FACTS section 4).
    "ia3": _row(78.0, 87.5, 48.6, 40.8, 40.8, 87.0, 49.4, 94.7, 68.3, 59.8, 56.0, 64.6),
    # --- with multi-task pre-training (the paper's own runs) ---
    "lora": _row(81.9, 89.3, 41.2, 40.3, 41.3, 93.7, 59.8, 96.2, 66.0, 67.9, 56.8, 66.8),
    # Unlabelled in the seed text (second row of the pre-trained block, between LoRA and TLoRA).
    "unlabelled_pretrained": _row(82.2, 89.9, 45.8, 41.6, 41.2, 91.7, 53.4, 94.2, 70.8, 63.3, 53.9, 66.2),
    "tlora": _row(80.7, 90.5, 39.9, 40.9, 41.2, 93.0, 54.4, 95.3, 66.3, 67.4, 57.3, 66.1),
    "poly": _row(84.7, 89.3, 46.0, 42.8, 42.7, 93.0, 63.3, 96.6, 68.9, 70.1, 59.9, 68.8),
    "mhr": _row(85.2, 90.5, 44.7, 42.3, 42.8, 94.7, 63.3, 96.7, 70.5, 70.6, 59.8, 69.2),
    "tensorpoly_i": _row(85.2, 91.7, 45.0, 42.5, 42.5, 96.7, 63.1, 96.6, 68.6, 69.8, 60.6, 69.3),
    "tensorpoly_ii": _row(84.7, 90.5, 44.4, 41.0, 42.0, 94.3, 58.7, 95.7, 67.6, 68.7, 59.9, 68.0),
}

#: Display names of the `PAPER_TABLE1` rows.
PAPER_TABLE1_LABELS: dict[str, str] = {
    "full_ft": "FullFT",
    "bitfit": "BitFit (with LN)",
    "layernorm": "LayerNorm",
    "adapter": "Adapter",
    "compacter": "Compacter",
    "compacter_pp": "Compacter++",
    "prompt_10": "Prompt(10)",
    "prompt_100": "Prompt(100)",
    "prefix_tuning": "Prefix tuning",
    "fishmask_0.2": "FishMask (0.2%)",
    "fishmask_0.02": "FishMask (0.02%)",
    "said": "SAID",
    "lora_no_pretrain": "LoRA (no pre-train)",
    "ia3": "T0-3B + (IA)3 (T-Few)",
    "lora": "LoRA",
    "unlabelled_pretrained": "(unlabelled row, w/ pre-train)",
    "tlora": "TLoRA",
    "poly": "Poly",
    "mhr": "MHR",
    "tensorpoly_i": "TensorPoly-I",
    "tensorpoly_ii": "TensorPoly-II",
}

#: The reference every report shows: T0-3B + (IA)3 with T-Few's losses (PAPER_FACTS section 4).
REFERENCE_ROW: str = "ia3"
