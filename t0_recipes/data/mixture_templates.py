"""Prompt templates of the pre-training tasks (``t0_train``), our own wording in promptsource's spirit.

Every row is in its hub field format; every template has answer choices, so the mixture is
scored like the held-out tasks (rank classification). `t0_recipes.data.templates` registers
these families next to the held-out ones (``TEMPLATES``, `templates_for`).

===============  ================================================================  =======
task             fields read                                                       choices
===============  ================================================================  =======
rotten_tomatoes  text, label (0 negative, 1 positive)                              2
imdb             text (``<br />`` removed, cut to 150 words), label (as above)     2
ag_news          text, label (0 World, 1 Sports, 2 Business, 3 Sci/Tech)           4
trec             text, coarse_label (0 ABBR, 1 ENTY, 2 DESC, 3 HUM, 4 LOC, 5 NUM)   6
mrpc             sentence1, sentence2, label (1: equivalent)                       2
paws             sentence1, sentence2, label (1: paraphrase)                       2
dream            dialogue (list of turns, cut to 150 words), question, choice,     3
                 answer (a string among ``choice``)
cos_e            question, choices (v1.0: 3 strings), answer (among ``choices``)   3
cosmos_qa        context (cut to 150 words), question, answer0..3, label 0-3       4
piqa             goal, sol1, sol2, label (0: sol1)                                 2
arc_easy         question, choices.text, choices.label, answerKey (among           3-5
arc_challenge    ``choices.label``: "A".."E" or "1".."5")
openbookqa       question_stem, choices.text/.label, answerKey                     4
mc_taco          sentence, question, answer, label (1: plausible)                  2
===============  ================================================================  =======

``sst2`` (the fifteenth ``t0_train`` task) keeps its templates in `t0_recipes.data.templates`,
where the tiny preset's few-shot stand-in already had them.

Long texts are cut to `MAX_WORDS` words so a prompt stays within a few hundred tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from t0_recipes.data.prompt import FieldError, Rendered, cap_words, clean_html, gold_index, label_of, nested, strip_end

__all__ = ["MAX_WORDS", "TRAINING_FAMILIES"]

#: Word cap of long passages (IMDB reviews, Cosmos QA contexts, DREAM dialogues).
MAX_WORDS = 150

Renderer = Callable[[Mapping[str, Any]], Rendered]


def _text(row: Mapping[str, Any], field: str) -> str:
    """``row[field]`` stripped; a value that is no string is refused naming the field."""
    value = row[field]
    if not isinstance(value, str):
        raise FieldError(field, f"{value!r} is not a string")
    return value.strip()


def _strings(row: Mapping[str, Any], *keys: str) -> list[str]:
    """The list of strings at ``row[k1][k2]...``, stripped; refused naming the dotted field otherwise."""
    value = nested(row, *keys)
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise FieldError(".".join(keys), f"{value!r} is not a non-empty list of strings")
    return [item.strip() for item in value]


def _options(choices: list[str]) -> str:
    return "\n".join(f"- {choice}" for choice in choices)


def _lettered(choices: list[str]) -> str:
    return "\n".join(f"{chr(ord('A') + i)}. {choice}" for i, choice in enumerate(choices))


# --------------------------------------------------------------------------- sentiment


def _sentiment(field: str, clean: Callable[[str], str]) -> dict[str, Renderer]:
    """Binary sentiment over ``row[field]`` (0 negative, 1 positive)."""

    def feeling(row):
        return Rendered(f'"{clean(_text(row, field))}"\nIs this movie review negative or positive?',
                        ["negative", "positive"], label_of(row))

    def liked_it(row):
        return Rendered(f"Review: {clean(_text(row, field))}\nDid the person who wrote this enjoy the film?",
                        ["No", "Yes"], label_of(row))

    def thumbs(row):
        return Rendered(f"{clean(_text(row, field))}\nThumbs up or thumbs down for this movie?",
                        ["thumbs down", "thumbs up"], label_of(row))

    return {"feeling": feeling, "liked_it": liked_it, "thumbs": thumbs}


def _short(text: str) -> str:
    return " ".join(text.split())


def _review(text: str) -> str:
    return cap_words(clean_html(text), MAX_WORDS)


# --------------------------------------------------------------------------- topic

_AG_SECTIONS = ["World news", "Sports", "Business", "Science and technology"]
_AG_TOPICS = ["world politics", "sports", "business", "science and technology"]


def _ag_section(row):
    return Rendered(f"{_text(row, 'text')}\nIn which section of a newspaper would this article appear?",
                    list(_AG_SECTIONS), label_of(row))


def _ag_topic(row):
    return Rendered(f"Article: {_text(row, 'text')}\nIs it about world politics, sports, business, or science and "
                    "technology?", list(_AG_TOPICS), label_of(row))


_TREC_KINDS = ["an abbreviation", "an entity", "a description", "a person", "a location", "a number"]
_TREC_CLASSES = ["Abbreviation", "Entity", "Description", "Human", "Location", "Numeric value"]


def _trec_expects(row):
    return Rendered(f"Question: {_text(row, 'text')}\nWhat kind of thing does this question ask for: an abbreviation, "
                    "an entity, a description, a person, a location, or a number?",
                    list(_TREC_KINDS), label_of(row, "coarse_label"))


def _trec_category(row):
    return Rendered(f'Sort the question "{_text(row, "text")}" into one answer type: Abbreviation, Entity, '
                    "Description, Human, Location, or Numeric value.", list(_TREC_CLASSES),
                    label_of(row, "coarse_label"))


# --------------------------------------------------------------------------- paraphrase


def _paraphrase() -> dict[str, Renderer]:
    """Sentence-pair paraphrase identification (label 1: same meaning)."""

    def same_thing(row):
        return Rendered(f"1. {_text(row, 'sentence1')}\n2. {_text(row, 'sentence2')}\n"
                        "Do these two sentences say the same thing? Yes or no?", ["No", "Yes"], label_of(row))

    def rewording(row):
        return Rendered(f'Is "{strip_end(_text(row, "sentence2"))}" a rewording of '
                        f'"{strip_end(_text(row, "sentence1"))}"?', ["no", "yes"], label_of(row))

    def equivalent(row):
        return Rendered(f"Sentence A: {_text(row, 'sentence1')}\nSentence B: {_text(row, 'sentence2')}\n"
                        "Are A and B equivalent or not equivalent?", ["not equivalent", "equivalent"], label_of(row))

    return {"same_thing": same_thing, "rewording": rewording, "equivalent": equivalent}


# --------------------------------------------------------------------------- multiple-choice QA


def _dialogue(row: Mapping[str, Any]) -> str:
    """The turns of a DREAM dialogue, one per line, until `MAX_WORDS` words (the turn that crosses it cut)."""
    turns = _strings(row, "dialogue")
    lines, budget = [], MAX_WORDS
    for turn in turns:
        words = turn.split()
        if len(words) >= budget:
            lines.append(cap_words(turn, budget))
            break
        lines.append(" ".join(words))
        budget -= len(words)
    return "\n".join(lines)


def _answer_among(row: Mapping[str, Any], choices_field: str) -> tuple[list[str], int]:
    """``row[choices_field]`` and the index of ``row["answer"]`` among them (``-1``: not there)."""
    choices = _strings(row, choices_field)
    return choices, gold_index(_text(row, "answer"), choices)


def _dream_answer(row):
    choices, gold = _answer_among(row, "choice")
    return Rendered(f"Dialogue:\n{_dialogue(row)}\nQuestion: {_text(row, 'question')}", choices, gold)


def _dream_read_and_choose(row):
    choices, gold = _answer_among(row, "choice")
    return Rendered(f"Read the conversation, then answer the question.\n{_dialogue(row)}\n"
                    f"{_text(row, 'question')}\nOptions:\n{_options(choices)}", choices, gold)


def _cos_e_question(row):
    choices, gold = _answer_among(row, "choices")
    return Rendered(f"{_text(row, 'question')}\nPick the best answer:\n{_options(choices)}", choices, gold)


def _cos_e_common_sense(row):
    choices, gold = _answer_among(row, "choices")
    return Rendered(f"Using common sense, answer: {_text(row, 'question')}", choices, gold)


def _cosmos_choices(row: Mapping[str, Any]) -> list[str]:
    return [_text(row, f"answer{i}") for i in range(4)]


def _cosmos_context(row: Mapping[str, Any]) -> str:
    return cap_words(_text(row, "context"), MAX_WORDS)


def _cosmos_question(row):
    return Rendered(f"{_cosmos_context(row)}\nQuestion: {_text(row, 'question')}", _cosmos_choices(row), label_of(row))


def _cosmos_listed(row):
    choices = _cosmos_choices(row)
    return Rendered(f"Context: {_cosmos_context(row)}\n{_text(row, 'question')}\nChoose one:\n{_options(choices)}",
                    choices, label_of(row))


def _piqa_better(row):
    return Rendered(f"Goal: {_text(row, 'goal')}\nWhich way of reaching this goal makes more sense?",
                    [_text(row, "sol1"), _text(row, "sol2")], label_of(row))


def _piqa_how_to(row):
    return Rendered(f"How would you do this: {strip_end(_text(row, 'goal'))}?",
                    [_text(row, "sol1"), _text(row, "sol2")], label_of(row))


def _keyed(row: Mapping[str, Any]) -> tuple[list[str], int]:
    """ARC / OpenBookQA: ``choices.text`` and the index of ``answerKey`` among ``choices.label``."""
    texts = _strings(row, "choices", "text")
    labels = _strings(row, "choices", "label")
    if len(labels) != len(texts):
        raise FieldError("choices.label", f"{len(labels)} labels for {len(texts)} choice texts")
    key = row["answerKey"]
    return texts, gold_index(key.strip() if isinstance(key, str) else key, labels)


def _science(question_field: str) -> dict[str, Renderer]:
    """Science multiple choice (ARC, OpenBookQA) over ``row[question_field]``."""

    def question(row):
        texts, gold = _keyed(row)
        return Rendered(f"Question: {_text(row, question_field)}\nAnswer:", texts, gold)

    def exam(row):
        texts, gold = _keyed(row)
        return Rendered(f"A science exam question:\n{_text(row, question_field)}\n{_lettered(texts)}\n"
                        "Write out the correct option.", texts, gold)

    return {"question": question, "exam": exam}


def _mc_taco_plausible(row):
    return Rendered(f"{_text(row, 'sentence')}\nQuestion: {_text(row, 'question')}\n"
                    f'Is "{_text(row, "answer")}" a plausible answer? Yes or no?', ["No", "Yes"], label_of(row))


def _mc_taco_makes_sense(row):
    return Rendered(f'Given that {_text(row, "sentence")} Does it make sense to answer "{_text(row, "question")}" '
                    f'with "{_text(row, "answer")}"?', ["no", "yes"], label_of(row))


#: Every pre-training family: ``task -> (label field, {template name: renderer})``.
TRAINING_FAMILIES: dict[str, tuple[str, dict[str, Renderer]]] = {
    "rotten_tomatoes": ("label", _sentiment("text", _short)),
    "imdb": ("label", _sentiment("text", _review)),
    "ag_news": ("label", {"section": _ag_section, "topic": _ag_topic}),
    "trec": ("coarse_label", {"expects": _trec_expects, "category": _trec_category}),
    "mrpc": ("label", _paraphrase()),
    "paws": ("label", _paraphrase()),
    "dream": ("answer", {"answer": _dream_answer, "read_and_choose": _dream_read_and_choose}),
    "cos_e": ("answer", {"question": _cos_e_question, "common_sense": _cos_e_common_sense}),
    "cosmos_qa": ("label", {"question": _cosmos_question, "listed": _cosmos_listed}),
    "piqa": ("label", {"better_way": _piqa_better, "how_to": _piqa_how_to}),
    "arc_easy": ("answerKey", _science("question")),
    "arc_challenge": ("answerKey", _science("question")),
    "openbookqa": ("answerKey", _science("question_stem")),
    "mc_taco": ("label", {"plausible": _mc_taco_plausible, "makes_sense": _mc_taco_makes_sense}),
}
