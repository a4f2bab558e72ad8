import math

import pytest
import torch

from twots.models.losses import offer_softmax_loss


def test_loss_is_softmax_cross_entropy_of_the_positive_within_its_offer_set():
    user = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    pos = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    neg = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[2.0, 0.0], [0.0, -1.0]]])
    # row 0 logits: pos 2, negs 0 and 1; row 1 logits: pos 2, negs 1 and -2
    row0 = math.log(math.exp(2) + math.exp(0) + math.exp(1)) - 2
    row1 = math.log(math.exp(2) + math.exp(1) + math.exp(-2)) - 2
    assert offer_softmax_loss(user, pos, neg).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    mask = torch.tensor([False, True])
    assert offer_softmax_loss(user, pos, neg, mask).item() == pytest.approx(row1, rel=1e-6)


def test_loss_falls_as_the_positive_outscores_the_negatives():
    user = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[[0.5, 0.0], [0.0, 3.0]]])
    losses = [offer_softmax_loss(user, torch.tensor([[s, 0.0]]), neg).item() for s in (0.0, 1.0, 5.0)]
    assert losses[0] > losses[1] > losses[2] > 0


def test_all_padding_batch_gives_zero_loss_with_a_graph():
    user = torch.randn(3, 4, requires_grad=True)
    loss = offer_softmax_loss(user, torch.randn(3, 4), torch.randn(3, 5, 4), torch.zeros(3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(user.grad, torch.zeros(3, 4))


def test_padded_rows_get_no_gradient():
    user = torch.randn(2, 4, requires_grad=True)
    offer_softmax_loss(user, torch.randn(2, 4), torch.randn(2, 3, 4), torch.tensor([True, False])).backward()
    assert user.grad[0].abs().sum() > 0
    assert torch.equal(user.grad[1], torch.zeros(4))


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="neg"):
        offer_softmax_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4))
