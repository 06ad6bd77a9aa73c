"""Every template on made-up rows in each dataset's hub field format: choice count and gold index."""

import random

import pytest

from t0_recipes.data.mixture_templates import MAX_WORDS
from t0_recipes.data.prompt import TemplateError
from t0_recipes.data.tasks import TASKS, TRAINING
from t0_recipes.data.templates import TEMPLATES, get_template, render, template_ids

CASES = [(task, template.id) for task in sorted(TEMPLATES) for template in TEMPLATES[task]]
TRAINING_CASES = [(task, template.id) for task in TRAINING for template in TEMPLATES[task]]


@pytest.mark.parametrize(("task", "template_id"), CASES)
def test_every_label_renders_to_its_gold_index(task, template_id, make_row):
    rng = random.Random(0)
    n_choices = TASKS[task].n_choices
    for label in range(n_choices):
        row = make_row(task, rng, label)
        text, choices, gold = render(template_id, row)
        assert len(choices) == n_choices
        assert gold == label
        assert text.strip() and all(choice.strip() for choice in choices)
        assert len(set(choices)) == n_choices or task in ("copa", "story_cloze", "hellaswag")


@pytest.mark.parametrize(("task", "template_id"), CASES)
def test_unlabelled_rows_are_refused(task, template_id, make_row):
    row = make_row(task, random.Random(1), 0)
    for field in ("label", "answer", "answer_right_ending", get_template(template_id).label_field):
        if field in row:
            row[field] = "" if isinstance(row[field], str) else -1
    with pytest.raises(ValueError, match=template_id):
        render(template_id, row)


@pytest.mark.parametrize(("task", "template_id"), CASES)
def test_a_label_outside_the_choices_names_its_field(task, template_id, make_row):
    template = get_template(template_id)
    row = make_row(task, random.Random(2), 0)
    value = row[template.label_field]
    n_choices = TASKS[task].n_choices
    if isinstance(value, int):
        row[template.label_field] = 7 if task != "story_cloze" else 3  # story_cloze counts its endings from 1
    else:  # a string label: a digit string (winogrande) or an answer / answer key that names no choice
        row[template.label_field] = str(n_choices + 1) if value.isdigit() else "no such answer"
    with pytest.raises(TemplateError) as caught:
        template(row)
    assert caught.value.field == template.label_field and caught.value.template_id == template_id
    assert "outside" in caught.value.problem or "not one of" in caught.value.problem


def _means(choice: str, accepted: tuple[str, ...]) -> bool:
    """Whether ``choice`` is one of ``accepted`` or starts with one as a whole word (``"a"``/``"an"`` dropped)."""
    text = choice.lower().removeprefix("an ").removeprefix("a ")
    return any(text == word or text.startswith(word + " ") for word in accepted)


#: Hub label encodings (the t0_train README) as the words a gold choice must be or start with.
_MEANING = {
    "rotten_tomatoes": [("negative", "no", "thumbs down"), ("positive", "yes", "thumbs up")],
    "ag_news": [("world",), ("sports",), ("business",), ("science",)],
    "trec": [("abbreviation",), ("entity",), ("description",), ("person", "human"), ("location",),
             ("number", "numeric")],
    "mrpc": [("no", "not equivalent"), ("yes", "equivalent")],
    "mc_taco": [("no",), ("yes",)],
}
_MEANING |= {"imdb": _MEANING["rotten_tomatoes"], "sst2": _MEANING["rotten_tomatoes"], "paws": _MEANING["mrpc"]}


def _answer_text(task: str, row: dict, label: int) -> str:
    """The text of the right answer of a multiple-choice row, read straight from its hub fields."""
    if task in ("dream", "cos_e"):
        return row["answer"]
    if task == "cosmos_qa":
        return row[f"answer{label}"]
    if task == "piqa":
        return row[f"sol{label + 1}"]
    choices = row["choices"]
    return choices["text"][choices["label"].index(row["answerKey"])]


@pytest.mark.parametrize(("task", "template_id"), TRAINING_CASES)
def test_gold_choice_means_the_hub_label(task, template_id, make_row):
    rng = random.Random(3)
    for label in range(TASKS[task].n_choices):
        row = make_row(task, rng, label)
        text, choices, gold = render(template_id, row)
        if task in _MEANING:
            assert _means(choices[gold], _MEANING[task][label]), (label, choices[gold])
        else:
            assert choices[gold] == _answer_text(task, row, label)


def test_training_texts_are_cleaned_and_capped(make_row):
    rng = random.Random(0)
    imdb = make_row("imdb", rng, 1)
    assert "<br" in imdb["text"] and len(imdb["text"].split()) > MAX_WORDS
    for template in TEMPLATES["imdb"]:
        text = template(imdb).input_text
        assert "<br" not in text and "/>" not in text
        assert len(text.split()) <= MAX_WORDS + 20
    cosmos = make_row("cosmos_qa", rng, 0)
    assert len(render("cosmos_qa/question", cosmos).input_text.split()) <= MAX_WORDS + 20
    dream = make_row("dream", rng, 2) | {"dialogue": [f"M: {'word ' * 100}", f"W: {'other ' * 100}", "M: late"]}
    text = render("dream/answer", dream).input_text
    assert len(text.split()) <= MAX_WORDS + 20 and "W: other" in text and "late" not in text


def test_arc_reads_letter_or_number_keys_and_names_nested_fields(make_row):
    row = make_row("arc_easy", random.Random(0), 2)
    numbered = row | {"choices": {"text": row["choices"]["text"][:3], "label": ["1", "2", "3"]}, "answerKey": "3"}
    assert render("arc_easy/question", numbered).gold == 2 and len(render("arc_easy/exam", numbered).choices) == 3
    with pytest.raises(TemplateError) as caught:
        render("arc_easy/question", row | {"choices": {"text": ["a", "b"]}})
    assert caught.value.field == "choices.label"


def test_missing_field_names_the_template_and_field(make_row):
    row = make_row("rte", random.Random(0), 0)
    del row["hypothesis"]
    with pytest.raises(ValueError, match=r"rte/does_it_follow.*hypothesis"):
        render("rte/does_it_follow", row)


def test_winogrande_reads_answer_or_label_and_fills_the_blank(make_row):
    row = make_row("winogrande", random.Random(0), 1)
    assert render("winogrande/blank_stands_for", row).gold == 1
    t_few_copy = {k: v for k, v in row.items() if k != "answer"} | {"label": 0}
    assert render("winogrande/blank_stands_for", t_few_copy).gold == 0
    filled = render("winogrande/fill_in", row).choices
    assert "_" not in filled[0] and "apple" in filled[0] and "lamp" in filled[1]


def test_hellaswag_label_as_int_or_string(make_row):
    row = make_row("hellaswag", random.Random(0), 3)
    assert render("hellaswag/continue", row).gold == 3
    assert render("hellaswag/continue", row | {"label": 3}).gold == 3
    without_ctx = {k: v for k, v in row.items() if k != "ctx"}
    assert row["ctx_a"] in render("hellaswag/continue", without_ctx).input_text


def test_copa_connective_follows_the_question(make_row):
    row = make_row("copa", random.Random(0), 0)
    assert render("copa/because_so", row | {"question": "cause"}).input_text.endswith("because")
    assert render("copa/because_so", row | {"question": "effect"}).input_text.endswith("so")


def test_template_ids_are_unique_and_prefixed_by_their_task():
    all_ids = [template.id for templates in TEMPLATES.values() for template in templates]
    assert len(all_ids) == len(set(all_ids))
    for task in TEMPLATES:
        assert all(template_id.startswith(f"{task}/") for template_id in template_ids(task))
    with pytest.raises(ValueError, match="unknown"):
        get_template("rte/nope")
