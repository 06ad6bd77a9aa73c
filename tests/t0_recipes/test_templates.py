"""Every template on made-up rows in each dataset's hub field format: choice count and gold index."""

import random

import pytest

from t0_recipes.data.tasks import TASKS
from t0_recipes.data.templates import TEMPLATES, get_template, render, template_ids

CASES = [(task, template.id) for task in sorted(TEMPLATES) for template in TEMPLATES[task]]


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
    for field in ("label", "answer", "answer_right_ending"):
        if field in row:
            row[field] = "" if isinstance(row[field], str) else -1
    with pytest.raises(ValueError, match=template_id):
        render(template_id, row)


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
