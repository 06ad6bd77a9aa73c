"""What every benchmark shares: interleaved median timing, peak memory, the machine, JSON / PNG / markdown.

Timing on a shared machine drifts, so benchmarks never compare numbers taken at different
moments: every candidate is sampled in turn (``A B C A B C ...``), each round gives one sample per
candidate, and a candidate's cost is reported as the median over rounds of its time divided by
its baseline's time *in the same round* (`paired_ratio`), next to the plain medians.

Peak memory of a step is the largest amount of memory it allocated above what was allocated
when it started: ``torch.cuda.max_memory_allocated`` on a GPU, and on a CPU a
`StoragePeakTracker` (a dispatch mode that sees every tensor storage the step creates and
frees). ``tracemalloc`` is no use here: it sees Python's own allocator, not torch's buffers.

Example::

    from benchmarks.common import interleaved_samples, paired_ratio
    samples = interleaved_samples({"lora": step_lora, "tlora": step_tlora}, device, repeats=9)
    print(paired_ratio(samples["tlora"], samples["lora"]))
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402
from tqdm import tqdm  # noqa: E402

__all__ = [
    "RESULTS_DIR",
    "T5_SIZES",
    "T5_TARGETS",
    "add_adapter_arguments",
    "add_common_arguments",
    "apply_threads",
    "bar_chart",
    "calls_per_sample",
    "environment",
    "interleaved_samples",
    "markdown_table",
    "median",
    "paired_difference",
    "paired_ratio",
    "peak_memory_bytes",
    "resolve_device",
    "share_base",
    "StoragePeakTracker",
    "synchronize",
    "t5_base",
    "write_outputs",
]

#: Where the committed results live.
RESULTS_DIR = Path(__file__).resolve().parent / "results"

Step = Callable[[], object]


# ----------------------------------------------------------------------------------------------
# command line and machine


def add_common_arguments(parser, *, default_json: Path, default_repeats: int) -> None:
    """``--json``, ``--repeats``, ``--threads``, ``--device``, ``--dtype``, ``--seed``, ``--quick``."""
    parser.add_argument("--json", type=Path, default=default_json, help="output JSON (PNG and .md written beside it)")
    parser.add_argument("--repeats", type=int, default=default_repeats, help="interleaved rounds per measurement")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (1 is the most stable on a shared CPU; 0 leaves torch's default)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda (when available) or cuda:N")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="seconds-long run for smoke tests")


def add_adapter_arguments(parser, *, n_tasks_help: str = "tasks of the routed methods") -> None:
    """The adapter hyper-parameters every speed benchmark takes, with the defaults of the T0-3B recipes' speed view.

    ``--lora-rank`` (r, 16), ``--tensor-rank`` (R, 8), ``--order`` (N, 2), ``--n-skills`` (S, 8),
    ``--n-heads`` (H, 64, MHR), ``--n-tasks`` (313, T0's training tasks).
    """
    parser.add_argument("--lora-rank", type=int, default=16, help="LoRA rank r")
    parser.add_argument("--tensor-rank", type=int, default=8, help="tensor rank R of the TLoRA-based methods")
    parser.add_argument("--order", type=int, default=2, help="tensor order N of the TLoRA-based methods")
    parser.add_argument("--n-skills", type=int, default=8, help="skills S of Poly and MHR")
    parser.add_argument("--n-heads", type=int, default=64, help="heads H of MHR")
    parser.add_argument("--n-tasks", type=int, default=313, help=n_tasks_help)


def apply_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` unless ``threads`` is 0."""
    if threads > 0:
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``; ``ValueError`` when CUDA is asked for and missing."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def environment(device: torch.device) -> dict:
    """The machine a result was measured on: platform, CPUs, torch, threads, device name."""
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": device_name,
    }


# ----------------------------------------------------------------------------------------------
# timing


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that wall-clock time covers them (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calls_per_sample(step: Step, device: torch.device, min_sample_s: float) -> int:
    """How many back-to-back calls make one sample last at least ``min_sample_s``."""
    calls = 1
    while True:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            step()
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_sample_s or calls >= 2**16:
            return calls
        calls *= 2 if elapsed == 0 else max(2, min(16, int(min_sample_s / elapsed) + 1))


def interleaved_samples(
    steps: dict[str, Step],
    device: torch.device,
    *,
    repeats: int,
    warmup: int = 2,
    min_sample_s: float = 0.0,
    desc: str | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of every step, ``repeats`` samples each, taken in turn (``A B C A B C ...``).

    Every step first runs ``warmup`` times (plans, allocator pools, lazy init). A sample is one
    call, or as many back-to-back calls as last ``min_sample_s`` (for sub-millisecond steps);
    the order of the steps is rotated every round so none always follows the same neighbour.
    A tqdm bar (on stderr, labelled ``desc``) counts the rounds.

    Returns:
        ``{name: [seconds per call, one per round]}``; sample ``i`` of every step comes from round ``i``.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    calls = {name: (calls_per_sample(step, device, min_sample_s) if min_sample_s > 0 else 1)
             for name, step in steps.items()}
    names = list(steps)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in tqdm(range(repeats), desc=desc or "rounds", unit="round", leave=False, file=sys.stderr):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            step = steps[name]
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls[name]):
                step()
            synchronize(device)
            samples[name].append((time.perf_counter() - start) / calls[name])
    return samples


def median(values: Iterable[float]) -> float:
    """Median of ``values``."""
    return statistics.median(list(values))


def _check_paired(samples: Sequence[float], baseline: Sequence[float]) -> None:
    if len(samples) != len(baseline) or not samples:
        raise ValueError(f"need as many samples as baseline samples, got {len(samples)} and {len(baseline)}")


def paired_ratio(samples: Sequence[float], baseline: Sequence[float]) -> float:
    """Median over rounds of ``samples[i] / baseline[i]`` (both from the same interleaved round)."""
    _check_paired(samples, baseline)
    return statistics.median(a / b for a, b in zip(samples, baseline))


def paired_difference(samples: Sequence[float], baseline: Sequence[float]) -> float:
    """Median over rounds of ``samples[i] - baseline[i]``: the extra cost over the baseline, round by round."""
    _check_paired(samples, baseline)
    return statistics.median(a - b for a, b in zip(samples, baseline))


# ----------------------------------------------------------------------------------------------
# memory


class StoragePeakTracker(TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the block, above what existed before it.

    Every op's inputs are marked as already there (so views and in-place results of existing
    tensors cost nothing); a storage first seen as an op's output is counted until it is freed
    (a weak-reference callback). CPU or any device; slows the ops it sees, so time elsewhere.

    Attributes:
        current: bytes held now by storages the block created.
        peak: the most ``current`` has been.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._known: dict[int, int] = {}  # id of the storage object -> counted bytes
        self._finalizers: list = []

    def _release(self, key: int, size: int) -> None:
        self._known.pop(key, None)
        self.current -= size

    def _mark(self, tensors: Iterable, *, count: bool) -> None:
        for tensor in tensors:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            try:
                storage = tensor.untyped_storage()
            except (RuntimeError, NotImplementedError):  # sparse / functional wrappers: skip
                continue
            key = id(storage)
            if key in self._known:
                continue
            size = storage.nbytes() if count else 0
            self._known[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            self._finalizers.append(weakref.finalize(storage, self._release, key, size))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._mark(tree_flatten((args, kwargs))[0], count=False)
        out = func(*args, **kwargs)
        self._mark(tree_flatten(out)[0], count=True)
        return out

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        for finalizer in self._finalizers:
            finalizer.detach()
        self._finalizers.clear()
        return result


def peak_memory_bytes(step: Step, device: torch.device) -> int:
    """Peak memory ``step`` allocates above what is allocated when it starts (one call).

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: `StoragePeakTracker`.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - start)
    with StoragePeakTracker() as tracker:
        step()
    return int(tracker.peak)


# ----------------------------------------------------------------------------------------------
# models

#: T5 shapes (T5 v1.1 / LM-adapted: gated-GELU, untied head). ``micro`` (one block each side) is
#: for ``--quick`` smoke runs, ``tiny`` a CPU-seconds model; the others are T5 v1.1 small / large
#: and T0-3B (= XL). 64 divides every adapted dim of each (MHR heads).
T5_SIZES: dict[str, dict] = {
    "micro": dict(vocab_size=256, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=1, num_decoder_layers=1),
    "tiny": dict(vocab_size=1024, d_model=128, d_kv=32, num_heads=4, d_ff=256, num_layers=2, num_decoder_layers=2),
    "small": dict(vocab_size=32128, d_model=512, d_kv=64, num_heads=6, d_ff=1024, num_layers=8, num_decoder_layers=8),
    "large": dict(
        vocab_size=32128, d_model=1024, d_kv=64, num_heads=16, d_ff=2816, num_layers=24, num_decoder_layers=24
    ),
    "t0-3b": dict(
        vocab_size=32128, d_model=2048, d_kv=64, num_heads=32, d_ff=5120, num_layers=24, num_decoder_layers=24
    ),
}

#: The linears the T0 recipes adapt (PAPER_FACTS section 1), for tensoradapt and for PEFT alike.
T5_TARGETS = r".*(SelfAttention|EncDecAttention|DenseReluDense)\.(q|k|v|o|wi_0|wi_1|wo)"


def t5_base(size: str, *, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """A randomly initialised ``T5ForConditionalGeneration`` of ``size`` (dropout off), seeded."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(**T5_SIZES[size], feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
    return model.to(device=device, dtype=dtype)


def share_base(base: torch.nn.Module) -> torch.nn.Module:
    """A second model of ``base``'s class and config whose parameters and buffers *are* ``base``'s.

    Built on ``meta`` and then pointed at ``base``'s tensors, so ten adapted copies of a large
    model cost one base model of memory (the base weights are frozen, so sharing them is safe).
    """
    with torch.device("meta"):
        model = type(base)(base.config)
    model.load_state_dict(base.state_dict(keep_vars=False), assign=True, strict=True)
    missing = [name for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
               if tensor.device.type == "meta"]
    if missing:
        raise RuntimeError(f"share_base left tensors on meta: {missing[:5]}")
    return model.train(base.training)


# ----------------------------------------------------------------------------------------------
# output


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence], *, align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; ``align`` holds ``'l'`` or ``'r'`` per column (default: right)."""
    align = align or ["r"] * len(headers)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def bar_chart(
    path: Path,
    groups: dict[str, dict[str, float]],
    *,
    title: str,
    ylabel: str,
    reference: float | None = None,
    reference_label: str | None = None,
    log: bool = False,
) -> None:
    """Grouped bar chart: ``groups[group][bar] = value``; an optional dashed horizontal reference line.

    A group shows only its own bars, side by side and centred; a bar name keeps one colour throughout.
    """
    group_names = list(groups)
    bar_names = list(dict.fromkeys(bar for bars in groups.values() for bar in bars))
    colours = {bar: f"C{index % 10}" for index, bar in enumerate(bar_names)}
    slots = max(len(bars) for bars in groups.values()) if groups else 1
    width = 0.8 / slots
    n_bars = sum(len(bars) for bars in groups.values())
    figure, axis = plt.subplots(figsize=(min(14.0, max(6.0, 0.35 * n_bars + 2.5)), 4.5))
    labelled: set[str] = set()
    for position, group in enumerate(group_names):
        present = [bar for bar in bar_names if bar in groups[group]]
        for index, bar in enumerate(present):
            x = position + (index - (len(present) - 1) / 2) * width
            axis.bar(x, groups[group][bar], width=width, color=colours[bar],
                     label=None if bar in labelled else bar)
            labelled.add(bar)
    if reference is not None:
        axis.axhline(reference, color="black", linestyle="--", linewidth=1, label=reference_label)
    axis.set_xticks(range(len(group_names)))
    axis.set_xticklabels(group_names, rotation=20, ha="right")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    if log:
        axis.set_yscale("log")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_outputs(path: Path, payload: dict | list, markdown: str | None = None) -> None:
    """Write ``payload`` as JSON to ``path`` and ``markdown`` to ``path`` with suffix ``.md``.

    Each file atomically (`tensoradapt.atomic.atomic_write`): a run stopped while writing (the GPU
    suite stops a part at its time limit) leaves the previous complete file, never half of one.
    """
    from tensoradapt.atomic import atomic_write

    path = Path(path)
    text = json.dumps(payload, indent=2) + "\n"
    atomic_write(path, lambda temporary: Path(temporary).write_text(text))
    if markdown is not None:
        atomic_write(path.with_suffix(".md"), lambda temporary: Path(temporary).write_text(markdown.rstrip() + "\n"))
