"""What the model returned: logits in every form a classifier returns them, and the class scores
and probabilities read from them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from gradcam_cli.errors import LayerError
from gradcam_cli.logits import class_probabilities, class_scores, extract_logits

LOGITS = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])


@pytest.mark.parametrize(
    "output",
    [
        LOGITS,
        SimpleNamespace(logits=LOGITS, hidden_states=None),  # Hugging Face
        {"features": torch.zeros(2, 8), "logits": LOGITS},  # 'logits' wins over the first
        {"out": LOGITS},  # else the first value
        (LOGITS, torch.zeros(2, 8)),  # the first item
        [{"logits": LOGITS}],
        LOGITS[:, :, None, None],  # a 1×1 conv head
    ],
    ids=["tensor", "attribute", "dict-key", "dict-first", "tuple", "nested", "conv-head"],
)
def test_the_logits_are_found_in_every_form(output):
    assert torch.equal(extract_logits(output), LOGITS)


def test_one_logit_per_image_becomes_a_column():
    assert extract_logits(torch.tensor([0.5, -1.0])).shape == (2, 1)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("text", "returned str, not logits"),
        ({}, "returned dict, not logits"),
        ((), "returned tuple, not logits"),
        (torch.zeros(2, 3, 4, 4), r"shape \[2, 3, 4, 4\].*task='segmentation'"),
        (torch.zeros(2, 3, 4), r"shape \[2, 3, 4\], not \[batch, classes\]"),
        ([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}], "task='detection'"),
    ],
)
def test_what_is_no_logits_is_refused_with_the_reason(output, message):
    with pytest.raises(LayerError, match=message):
        extract_logits(output)


def test_many_classes_are_scored_and_softmaxed_as_they_are():
    assert torch.equal(class_scores(LOGITS), LOGITS)
    torch.testing.assert_close(class_probabilities(LOGITS), LOGITS.softmax(dim=1))


def test_a_single_logit_is_two_classes_negative_and_positive():
    z = torch.tensor([[2.0], [-0.5]])
    assert torch.equal(class_scores(z), torch.tensor([[-2.0, 2.0], [0.5, -0.5]]))
    p = torch.sigmoid(z)  # not softmax([-z, z]), which would be sigmoid(2z)
    torch.testing.assert_close(class_probabilities(z), torch.cat([1 - p, p], dim=1))


def test_a_model_that_outputs_probabilities_is_read_as_it_is():
    p = torch.tensor([[0.8], [0.1]])
    expected = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    torch.testing.assert_close(class_scores(p, probabilities=True), expected)
    torch.testing.assert_close(class_probabilities(p, probabilities=True), expected)
    probs = LOGITS.softmax(dim=1)
    assert torch.equal(class_probabilities(probs, probabilities=True), probs)
