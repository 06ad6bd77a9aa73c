"""The project's own prompt templates, in the spirit of promptsource, for every task it reads.

A template turns one raw row (the hub's field format) into a `Rendered` triple: the input
text, the list of answer choices, and the index of the gold choice. Every template has an id
``"<task>/<name>"``; with templates-as-tasks each id is its own task id.

The wording is ours; the shape of each task follows the hub's fields:

=============  ===========================================================  =======
task           fields read                                                  choices
=============  ===========================================================  =======
rte            premise, hypothesis, label (0 entailment, 1 not)             2
cb             premise, hypothesis, label (0 entail., 1 contra., 2 neutral)  3
anli_r1..r3    premise, hypothesis, label (0 entail., 1 neutral, 2 contra.)  3
copa           premise, choice1, choice2, question (cause/effect), label    2
hellaswag      ctx (or ctx_a + ctx_b), endings[4], label (int or "0".."3")  4
story_cloze    input_sentence_1..4, sentence_quiz1/2, answer_right_ending   2
wsc            text, span1_text, span2_text, label (1: span2 is span1)       2
winogrande     sentence (with "_"), option1, option2, answer ("1"/"2")      2
wic            word, sentence1, sentence2, label (1: same sense)            2
boolq          question, passage, label (1: yes)                            2
sst2           sentence, label (1: positive)                                2
=============  ===========================================================  =======

The fifteen pre-training tasks of ``t0_train`` (sentiment, topic, paraphrase, multiple-choice
QA) have their templates in `t0_recipes.data.mixture_templates`; they are registered here, so
`templates_for` answers for every registry task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from t0_recipes.data.mixture_templates import TRAINING_FAMILIES
from t0_recipes.data.prompt import Rendered, Template, TemplateError
from t0_recipes.data.prompt import label_of as _label
from t0_recipes.data.prompt import lower_first as _lower_first
from t0_recipes.data.prompt import strip_end as _strip_end

__all__ = [
    "Rendered",
    "TEMPLATES",
    "Template",
    "TemplateError",
    "get_template",
    "render",
    "template_ids",
    "templates_for",
]

# --------------------------------------------------------------------------- helpers


def _winogrande_gold(row: Mapping[str, Any]) -> int:
    """Hub Winogrande stores ``answer`` as ``"1"``/``"2"``; T-Few's copies also carry ``label`` 0/1."""
    answer = row.get("answer")
    if answer not in (None, ""):
        return _label(row, "answer") - 1
    return _label(row)


def _hellaswag_context(row: Mapping[str, Any]) -> str:
    context = row.get("ctx")
    if not context:
        context = f"{row['ctx_a']} {row['ctx_b']}".strip()
    return context.strip()


def _story(row: Mapping[str, Any]) -> str:
    return " ".join(row[f"input_sentence_{i}"].strip() for i in range(1, 5))


# --------------------------------------------------------------------------- templates

_YES_NO = ["Yes", "No"]
_NO_YES = ["No", "Yes"]


def _rte_follow(row):
    return Rendered(f'{row["premise"]}\nDoes it follow that "{_strip_end(row["hypothesis"])}"? Yes or no?',
                    list(_YES_NO), _label(row))


def _rte_claim(row):
    return Rendered(f'Passage: {row["premise"]}\nClaim: {row["hypothesis"]}\nIs the claim backed by the passage? '
                    "Answer yes or no.", ["yes", "no"], _label(row))


def _rte_guaranteed(row):
    return Rendered(f'Given that {_lower_first(row["premise"])} Is it then certain that '
                    f'"{_strip_end(row["hypothesis"])}"? Yes or no?', list(_YES_NO), _label(row))


def _nli3(order: list[str]):
    """Three-way NLI renderers for a choice order (CB: entail/contra/neutral; ANLI: entail/neutral/contra)."""
    words = {"entailment": ("Yes", "true", "Definitely"),
             "contradiction": ("No", "false", "Not at all"),
             "neutral": ("Maybe", "neither", "Possibly")}

    def pick(column: int) -> list[str]:
        return [words[name][column] for name in order]

    def follow(row):
        return Rendered(f'{row["premise"]}\nQuestion: does this mean that "{_strip_end(row["hypothesis"])}"? '
                        "Yes, no, or maybe?", pick(0), _label(row))

    def true_false(row):
        return Rendered(f'Take the following as given: {row["premise"]}\nThen the statement '
                        f'"{_strip_end(row["hypothesis"])}" is true, false, or neither?', pick(1), _label(row))

    def how_sure(row):
        return Rendered(f'Text: {row["premise"]}\nHow sure can we be that "{_strip_end(row["hypothesis"])}"? '
                        "Definitely, possibly, or not at all?", pick(2), _label(row))

    return {"does_this_mean": follow, "true_false_neither": true_false, "how_sure": how_sure}


_CB_ORDER = ["entailment", "contradiction", "neutral"]  # super_glue/cb label ids
_ANLI_ORDER = ["entailment", "neutral", "contradiction"]  # anli label ids


def _copa_question(row):
    asked = "What caused this?" if row["question"] == "cause" else "What happened as a result?"
    return Rendered(f'{row["premise"]}\n{asked}', [row["choice1"].strip(), row["choice2"].strip()], _label(row))


def _copa_connective(row):
    connective = "because" if row["question"] == "cause" else "so"
    return Rendered(f'{_strip_end(row["premise"])} {connective}',
                    [_lower_first(row["choice1"]), _lower_first(row["choice2"])], _label(row))


def _copa_pick(row):
    relation = "the cause" if row["question"] == "cause" else "the effect"
    return Rendered(f'Premise: {row["premise"]}\nWhich of these is more likely {relation}?\n'
                    f'- {row["choice1"]}\n- {row["choice2"]}', [row["choice1"].strip(), row["choice2"].strip()],
                    _label(row))


def _hellaswag_continue(row):
    return Rendered(f"{_hellaswag_context(row)}\nWhat is the most natural way to continue?",
                    [ending.strip() for ending in row["endings"]], _label(row))


def _hellaswag_activity(row):
    topic = row.get("activity_label") or "an everyday activity"
    return Rendered(f"The following is about {topic}. {_hellaswag_context(row)}",
                    [ending.strip() for ending in row["endings"]], _label(row))


def _story_ending(row):
    return Rendered(f"{_story(row)}\nWhich sentence ends this story best?",
                    [row["sentence_quiz1"].strip(), row["sentence_quiz2"].strip()], _label(row, "answer_right_ending") - 1)


def _story_continue(row):
    return Rendered(f"Story: {_story(row)}\nWhat happens next?",
                    [row["sentence_quiz1"].strip(), row["sentence_quiz2"].strip()], _label(row, "answer_right_ending") - 1)


def _wsc_refer(row):
    return Rendered(f'{row["text"]}\nIn the passage above, does "{row["span2_text"]}" refer to '
                    f'"{row["span1_text"]}"? Yes or no?', list(_NO_YES), _label(row))


def _wsc_replace(row):
    return Rendered(f'{row["text"]}\nCould "{row["span2_text"]}" be replaced by "{row["span1_text"]}" '
                    "without changing the meaning? Yes or no?", list(_NO_YES), _label(row))


def _winogrande_blank(row):
    return Rendered(f'{row["sentence"]}\nWho or what does the "_" stand for: {row["option1"]} or {row["option2"]}?',
                    [row["option1"], row["option2"]], _winogrande_gold(row))


def _winogrande_fill(row):
    sentence = row["sentence"]
    return Rendered("Fill in the blank and write the sentence out:\n" + sentence,
                    [sentence.replace("_", row["option1"], 1), sentence.replace("_", row["option2"], 1)],
                    _winogrande_gold(row))


def _wic_same_sense(row):
    return Rendered(f'1. {row["sentence1"]}\n2. {row["sentence2"]}\nIs the word "{row["word"]}" used with the '
                    "same meaning in both sentences? Yes or no?", list(_NO_YES), _label(row))


def _wic_meaning(row):
    return Rendered(f'Does "{row["word"]}" mean the same thing in "{row["sentence1"]}" and in '
                    f'"{row["sentence2"]}"?', ["No", "Yes"], _label(row))


def _boolq_question(row):
    question = row["question"].strip().rstrip("?")
    return Rendered(f'{row["passage"]}\nQuestion: {question}?\nAnswer yes or no.', list(_NO_YES), _label(row))


def _boolq_after_reading(row):
    question = row["question"].strip().rstrip("?")
    return Rendered(f'After reading "{row["passage"]}", would you say {question}?', ["no", "yes"], _label(row))


def _sst2_feeling(row):
    return Rendered(f'"{row["sentence"].strip()}"\nIs the feeling of this review negative or positive?',
                    ["negative", "positive"], _label(row))


def _sst2_liked(row):
    return Rendered(f'Review: {row["sentence"].strip()}\nDid the reviewer like the movie?', ["No", "Yes"], _label(row))


#: The field each held-out family's gold index comes from, where it is not ``"label"``.
_LABEL_FIELDS = {"winogrande": "answer", "story_cloze": "answer_right_ending"}


def _build() -> dict[str, tuple[Template, ...]]:
    families: dict[str, dict[str, Callable[[Mapping[str, Any]], Rendered]]] = {
        "rte": {"does_it_follow": _rte_follow, "claim_backed": _rte_claim, "is_it_certain": _rte_guaranteed},
        "cb": _nli3(_CB_ORDER),
        "anli_r1": _nli3(_ANLI_ORDER),
        "anli_r2": _nli3(_ANLI_ORDER),
        "anli_r3": _nli3(_ANLI_ORDER),
        "copa": {"what_happened": _copa_question, "because_so": _copa_connective, "pick_one": _copa_pick},
        "hellaswag": {"continue": _hellaswag_continue, "activity": _hellaswag_activity},
        "story_cloze": {"best_ending": _story_ending, "what_next": _story_continue},
        "wsc": {"does_it_refer": _wsc_refer, "replace_span": _wsc_replace},
        "winogrande": {"blank_stands_for": _winogrande_blank, "fill_in": _winogrande_fill},
        "wic": {"same_sense": _wic_same_sense, "mean_the_same": _wic_meaning},
        "boolq": {"question": _boolq_question, "after_reading": _boolq_after_reading},
        "sst2": {"feeling": _sst2_feeling, "liked_it": _sst2_liked},
    }
    labelled = {task: (_LABEL_FIELDS.get(task, "label"), renderers) for task, renderers in families.items()}
    return {
        task: tuple(Template(f"{task}/{name}", task, fn, label_field) for name, fn in renderers.items())
        for task, (label_field, renderers) in (labelled | TRAINING_FAMILIES).items()
    }


#: Every task's templates, by registry task name.
TEMPLATES: dict[str, tuple[Template, ...]] = _build()


def templates_for(task: str) -> tuple[Template, ...]:
    """The templates of ``task`` (a registry name, see `t0_recipes.data.tasks`)."""
    if task not in TEMPLATES:
        raise ValueError(f"task={task!r} has no templates; known: {sorted(TEMPLATES)}")
    return TEMPLATES[task]


def template_ids(task: str) -> list[str]:
    """The ids of ``task``'s templates, in order."""
    return [template.id for template in templates_for(task)]


def get_template(template_id: str) -> Template:
    """The template with id ``"<task>/<name>"``."""
    task = template_id.split("/", 1)[0]
    for template in templates_for(task):
        if template.id == template_id:
            return template
    raise ValueError(f"template_id={template_id!r} is unknown; {task!r} has {template_ids(task)}")


def render(template: Template | str, row: Mapping[str, Any]) -> Rendered:
    """Render ``row`` with ``template`` (a `Template` or its id)."""
    if isinstance(template, str):
        template = get_template(template)
    return template(row)
