"""Rank classification on hand-computed cases: lowest length-normalised loss wins, not lowest sum."""

import math

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from t0_recipes.data.collate import MultipleChoiceCollator
from t0_recipes.data.rows import Example
from t0_recipes.scoring.rank import EvalResult, accuracy, evaluate_examples, predict
from t0_recipes.scoring.seq2seq import length_normalized_scores


class TokenLossModel(nn.Module):
    """A fake encoder-decoder whose loss on a target token depends on that token alone.

    With vocabulary ``V``, a target ``y`` of loss ``L`` gets logit ``a`` and every other token
    0, where ``softmax`` gives ``p(y) = exp(-L)``: ``a = log(V - 1) - L - log(1 - exp(-L))``.
    """

    def __init__(self, loss_of_token: dict[int, float], vocab: int = 384) -> None:
        super().__init__()
        self.loss_of_token, self.vocab = loss_of_token, vocab
        self.anchor = nn.Parameter(torch.zeros(()))  # a parameter, for .device
        self.encoder_calls = 0

    def get_encoder(self):
        def encode(input_ids, attention_mask, return_dict=True):
            self.encoder_calls += 1
            return BaseModelOutput(last_hidden_state=torch.zeros(*input_ids.shape, 2))

        return encode

    def forward(self, encoder_outputs, attention_mask, labels, decoder_attention_mask, **kwargs):
        assert encoder_outputs.last_hidden_state.shape[0] == labels.shape[0]  # states repeated per choice
        logits = torch.zeros(*labels.shape, self.vocab)
        for index in torch.nonzero(labels != -100):
            row, t = index.tolist()
            token = int(labels[row, t])
            loss = self.loss_of_token[token]
            logits[row, t, token] = math.log(self.vocab - 1) - loss - math.log(1 - math.exp(-loss))
        return Seq2SeqLMOutput(logits=logits)


EOS, A, B, C = 1, ord("a") + 3, ord("b") + 3, ord("c") + 3  # ByT5: byte + 3


def test_pure_scores_disagree_with_sums():
    # choice 0: four tokens of loss 1 (sum 4, mean 1); choice 1: two tokens of loss 1.5 (sum 3, mean 1.5)
    token_losses = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [1.5, 1.5, 0.0, 0.0]]])
    mask = torch.tensor([[[1, 1, 1, 1], [1, 1, 0, 0]]])
    scores = length_normalized_scores(token_losses, mask)
    assert scores.tolist() == [[1.0, 1.5]]
    assert predict(scores).tolist() == [0]
    assert (token_losses * mask).sum(-1).argmin(-1).tolist() == [1]  # the plain sum would pick the other


def test_missing_choices_never_win():
    token_losses = torch.zeros(1, 3, 2)
    mask = torch.tensor([[[1, 1], [1, 0], [0, 0]]])
    token_losses[0, 0] = 5.0
    token_losses[0, 1, 0] = 4.0
    assert predict(length_normalized_scores(token_losses, mask)).tolist() == [1]


def test_evaluate_examples_with_hand_chosen_token_losses(tokenizer):
    model = TokenLossModel({EOS: 1.0, A: 1.0, B: 2.0, C: 0.2})
    examples = [
        # "aaa"+EOS: sum 4, mean 1.0; "b"+EOS: sum 3, mean 1.5 -> "aaa" (index 0) although its sum is larger
        Example(0, "first", ("aaa", "b"), 0, "t", "t/one"),
        # "b"+EOS mean 1.5; "ccccc"+EOS: sum 2.0, mean 1/3 -> index 1
        Example(0, "second", ("b", "ccccc"), 0, "t", "t/two"),
        # three choices: "ab"+EOS mean 4/3, "cc"+EOS mean 1.4/3, "bbb"+EOS mean 7/4 -> index 1
        Example(0, "third", ("ab", "cc", "bbb"), 1, "t", "t/one"),
    ]
    result = evaluate_examples(model, examples, MultipleChoiceCollator(tokenizer), batch_size=2, progress=False)
    assert result.predictions == [0, 1, 1]
    assert result.golds == [0, 0, 1]
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.by_template == {"t/one": 1.0, "t/two": 0.0}
    assert model.encoder_calls == 2  # one encoder call per batch, not per choice


def test_tiny_t5_matches_naive_argmin_and_batch_size_does_not_matter(model, tokenizer):
    examples = [
        Example(0, f"Prompt number {i}: which answer?", ("yes", "no", "perhaps")[: 2 + i % 2], i % 2, "t", "t/x")
        for i in range(5)
    ]
    naive = []
    with torch.no_grad():
        for example in examples:
            prompt = tokenizer(example.input_text, return_tensors="pt").input_ids
            scores = []
            for choice in example.choices:
                labels = tokenizer(choice, return_tensors="pt").input_ids
                scores.append(model(input_ids=prompt, labels=labels).loss.item())  # mean over tokens incl. EOS
            naive.append(min(range(len(scores)), key=scores.__getitem__))
    collator = MultipleChoiceCollator(tokenizer)
    model.train()
    one = evaluate_examples(model, examples, collator, batch_size=1, progress=False)
    assert model.training  # restored
    three = evaluate_examples(model, examples, collator, batch_size=3, progress=False)
    assert one.predictions == three.predictions == naive
    assert one.accuracy == accuracy(naive, [e.gold for e in examples])


def test_accuracy_and_median_over_templates():
    assert accuracy([0, 1, 1], [0, 1, 0]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="shape"):
        accuracy([0], [0, 1])
    result = EvalResult(0.5, 4, [0] * 4, [0] * 4, {"a": 0.2, "b": 0.6, "c": 0.9})
    assert result.median_over_templates == 0.6
