"""What every template module shares: `Rendered`, `Template`, `TemplateError` and small text helpers.

`t0_recipes.data.templates` (held-out tasks, the registry) and
`t0_recipes.data.mixture_templates` (the pre-training tasks) both build on this module, so
neither imports the other's internals.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "FieldError",
    "Rendered",
    "Template",
    "TemplateError",
    "cap_words",
    "clean_html",
    "gold_index",
    "label_of",
    "lower_first",
    "nested",
    "strip_end",
]


class Rendered(NamedTuple):
    """One prompted example: ``choices[gold]`` is the right answer."""

    input_text: str
    choices: list[str]
    gold: int


class TemplateError(ValueError):
    """A row a template cannot render; the message names the template, and the field when one is at fault.

    Attributes:
        template_id: the template's id.
        field: the row field at fault (``"label"``, ``"choices.label"``, ...), or ``None``.
        problem: what is wrong, without the template's name (``"7 is outside the 2 choices"``).
    """

    def __init__(self, template_id: str, problem: str, *, field: str | None = None) -> None:
        self.template_id = template_id
        self.field = field
        self.problem = problem
        where = f"field {field!r}: " if field is not None else ""
        super().__init__(f"template {template_id!r}: {where}{problem}")


class FieldError(ValueError):
    """Raised by a renderer for a field whose value it cannot use; `Template` names its template too."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"field {field!r}: {problem}")


_MISSING = object()


@dataclass(frozen=True)
class Template:
    """A named prompt for one task.

    Attributes:
        id: ``"<task>/<name>"``; the task id of the template under templates-as-tasks.
        task: the task (registry name) whose rows it reads.
        render_fn: ``row -> Rendered``.
        label_field: the row field the gold index comes from; named when it is out of range.
    """

    id: str
    task: str
    render_fn: Callable[[Mapping[str, Any]], Rendered]
    label_field: str = "label"

    def __call__(self, row: Mapping[str, Any]) -> Rendered:
        """Render ``row``.

        Raises:
            TemplateError: (a ``ValueError``) naming the template, and the field when a
                field is missing or the label is out of range (an unlabelled row).
        """
        try:
            rendered = self.render_fn(row)
        except FieldError as error:
            raise TemplateError(self.id, error.problem, field=error.field) from None
        except KeyError as error:
            field = error.args[0]
            raise TemplateError(self.id, f"row has no field {field!r}; fields: {sorted(row)}", field=field) from None
        except (TypeError, AttributeError, IndexError, ValueError) as error:
            raise TemplateError(self.id, f"cannot render the row ({type(error).__name__}: {error})") from None
        if not 0 <= rendered.gold < len(rendered.choices):
            raise TemplateError(self.id, self._gold_problem(row, len(rendered.choices)), field=self.label_field)
        return rendered

    def _gold_problem(self, row: Mapping[str, Any], n_choices: int) -> str:
        """Why the row's label names no choice: unlabelled, out of range, or not among the options."""
        value = row.get(self.label_field, _MISSING)
        if value is _MISSING:
            return f"absent, so no gold answer among the {n_choices} choices"
        if value in (None, "", -1, "-1"):
            return f"{value!r} is no label (an unlabelled row, e.g. a hub test split?)"
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            return f"{value!r} is not one of the {n_choices} choices"
        return f"{value!r} is outside the {n_choices} choices"


# --------------------------------------------------------------------------- helpers


def label_of(row: Mapping[str, Any], field: str = "label") -> int:
    """The integer label of ``row`` (hub labels may be ints or digit strings; ``-1``/``""``/``None`` = none).

    Raises:
        FieldError: a value that is no integer (``1.5``, ``[0]``, ``true``).
    """
    value = row[field]
    if isinstance(value, str):
        value = value.strip()
        return int(value) if value.lstrip("-").isdigit() else -1
    if value is None:
        return -1
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError(field, f"{value!r} is not an integer label")
    return value


def gold_index(answer: Any, options: list[Any]) -> int:
    """The position of ``answer`` among ``options`` (the first one when repeated), ``-1`` when absent."""
    try:
        return options.index(answer)
    except ValueError:
        return -1


def nested(row: Mapping[str, Any], *keys: str) -> Any:
    """``row[k1][k2]...``; a missing key raises ``KeyError("k1.k2")`` so the whole path is named."""
    value: Any = row
    for depth, key in enumerate(keys):
        if not isinstance(value, Mapping) or key not in value:
            raise KeyError(".".join(keys[: depth + 1]))
        value = value[key]
    return value


_TAG = re.compile(r"<br\s*/?>|<[^>]{1,20}>", re.IGNORECASE)


def clean_html(text: str) -> str:
    """``text`` with its tags (IMDB's ``<br />``) turned into spaces and runs of spaces closed."""
    return " ".join(_TAG.sub(" ", text).split())


def cap_words(text: str, max_words: int) -> str:
    """``text`` cut to its first ``max_words`` words (``" ..."`` appended when cut); whitespace runs closed."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    return " ".join(words[:max_words]) + " ..."


def strip_end(text: str) -> str:
    """``text`` without its trailing whitespace and final full stop."""
    text = text.strip()
    return text[:-1] if text.endswith(".") else text


def lower_first(text: str) -> str:
    """``text`` with its first letter lower-cased, unless it starts a proper-looking word (``I``, ``I'm``)."""
    text = text.strip()
    if not text or text.split(" ", 1)[0] in {"I", "I'm", "I'd", "I've", "I'll"}:
        return text
    return text[0].lower() + text[1:]
