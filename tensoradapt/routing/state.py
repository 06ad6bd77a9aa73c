"""The routing inputs shared by every adapted layer of a model during one call."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from tensoradapt.routing.base import TaskIds

__all__ = ["RoutingInputs", "RoutingState"]


@dataclass(frozen=True)
class RoutingInputs:
    """What routes one call: task ids and (T-REX) a semantic prior.

    Attributes:
        task_ids: ``None``, an ``int`` (one task for the batch), a 0-d ``LongTensor`` (same), or
            ``LongTensor (batch,)`` (one task per example).
        semantic_prior: ``None`` or ``(batch, k)`` similarities to the k centroids.
        prepare: ``None`` when the inputs are ready, else ``prepare(inputs) -> RoutingInputs``,
            which the first layer to read them runs (range checks, the move to the adapters'
            device). Set while ``torch.compile`` traces a model call: its tensor work then lands
            in the forward's graph rather than in a graph of the forward hook's own.
    """

    task_ids: TaskIds | None = None
    semantic_prior: torch.Tensor | None = None
    prepare: Callable[[RoutingInputs], RoutingInputs] | None = field(default=None, compare=False, repr=False)


@dataclass
class RoutingState:
    """A stack of `RoutingInputs`, shared by reference by all adapted layers of a model.

    The model's forward pre-hook pushes the call's inputs and its forward hook pops them, so a
    nested call (``generate`` calling ``forward``) inherits the outer inputs. Layers ask
    `task_ids_for` with their batch size: ids given for ``b`` examples are repeated for a
    batch of ``k * b`` rows (beam search expands every example into ``k`` consecutive beams).
    Inputs pushed with a ``prepare`` step are prepared by the first read and replaced by the result.
    """

    stack: list[RoutingInputs] = field(default_factory=lambda: [RoutingInputs()])
    _expanded: dict = field(default_factory=dict, repr=False)

    @property
    def current(self) -> RoutingInputs:
        """The innermost inputs."""
        return self.stack[-1]

    def push(self, inputs: RoutingInputs) -> None:
        """Enter a call with ``inputs``."""
        self.stack.append(inputs)
        self._expanded.clear()

    def pop(self) -> None:
        """Leave the innermost call."""
        if len(self.stack) > 1:
            self.stack.pop()
        self._expanded.clear()

    @contextmanager
    def scope(self, inputs: RoutingInputs):
        """``with state.scope(inputs): ...`` pushes and always pops."""
        self.push(inputs)
        try:
            yield
        finally:
            self.pop()

    def ready(self) -> RoutingInputs:
        """The innermost inputs, prepared (see `RoutingInputs.prepare`)."""
        inputs = self.stack[-1]
        if inputs.prepare is not None:
            inputs = inputs.prepare(inputs)
            self.stack[-1] = inputs
        return inputs

    def _expand(self, name: str, value: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] == batch:
            return value
        key = (name, batch)
        if key not in self._expanded:
            given = value.shape[0]
            if batch % given:
                raise ValueError(
                    f"{name} has {given} rows but the layer sees a batch of {batch}: pass one {name} row per "
                    f"example (beam search may repeat each example's rows, so the batch must be a multiple)"
                )
            self._expanded[key] = value.repeat_interleave(batch // given, dim=0)
        return self._expanded[key]

    def task_ids_for(self, batch: int) -> TaskIds | None:
        """Task ids for a layer input whose first axis is ``batch``."""
        return self._expand("task_ids", self.ready().task_ids, batch)

    def semantic_prior_for(self, batch: int) -> torch.Tensor | None:
        """Semantic prior ``(batch, k)`` for a layer input whose first axis is ``batch``."""
        return self._expand("semantic_prior", self.ready().semantic_prior, batch)
