"""The t* guide of Theorem 2.1 on users simulated from the paper's model, and the t* sweep."""

import numpy as np
import pytest
import torch

from experiments.t_star import prefix_grid, theory_guide

D, N_ITEMS, P = 8, 300, 5


def simulate(spread, users=48, events=64, seed=0):
    """Users phi* = m + spread * noise click within random offer sets by softmax(phi* . x) (clicked item first)."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(N_ITEMS, D, generator=g)
    m = torch.randn(D, generator=g)
    phi_true = m + spread * torch.randn(users, D, generator=g)
    offers = torch.stack([torch.randperm(N_ITEMS, generator=g)[:1 + P] for _ in range(users * events)])
    offers = offers.view(users, events, 1 + P)
    logits = torch.einsum("unkd,ud->unk", items[offers], phi_true)
    clicked = torch.multinomial(torch.softmax(logits, -1).view(-1, 1 + P), 1, generator=g).view(users, events)
    pos = offers.gather(2, clicked.unsqueeze(-1)).squeeze(-1)
    negs = torch.stack([offers[u, e][offers[u, e] != pos[u, e]] for u in range(users) for e in range(events)])
    return items, pos.numpy(), negs.view(users, events, P).numpy(), phi_true


def test_prefix_grid():
    assert prefix_grid(20) == [0, 1, 2, 4, 8, 16]
    assert prefix_grid(2) == [0, 1]


def test_theory_guide_recovers_the_spread_and_moves_t_star_the_right_way():
    torch.manual_seed(0)
    guides = {}
    for spread, l2 in ((0.3, 0.1), (1.0, 0.1), (0.3, 1.0)):
        items, pos, negs, phi_true = simulate(spread)
        lengths = np.full(len(pos), pos.shape[1])
        guides[spread, l2] = theory_guide(items, pos, negs, lengths, phi_true, l2=l2, steps=150)
    for (spread, _), guide in guides.items():
        curve = guide.error_curve
        # The estimate approaches phi* as the user's history grows.
        assert curve[0] > curve[8] > curve[32]
        assert guide.q > guide.var_m > 0
        assert guide.var_m_stage1 == pytest.approx(spread ** 2 * D, rel=0.5)
        assert np.isfinite(guide.t_star) and guide.t_star > 0
    # Users alike (small Var_m) make the common start worth more interactions: t** grows (about 14 vs 2 here).
    assert guides[0.3, 0.1].t_star > 3 * guides[1.0, 0.1].t_star
    # Q and Var_m both shrink with the regularisation, their ratio hardly moves.
    assert guides[0.3, 1.0].q < guides[0.3, 0.1].q / 3
    assert guides[0.3, 1.0].t_star == pytest.approx(guides[0.3, 0.1].t_star, rel=0.25)
    assert guides[0.3, 0.1].as_dict()["users"] == 48


def test_theory_guide_rejects_too_little_data():
    items, pos, negs, phi_true = simulate(0.5, users=3, events=4)
    with pytest.raises(ValueError, match="at least 2"):
        theory_guide(items, pos[:1], negs[:1], np.array([4]), phi_true[:1])
    with pytest.raises(ValueError, match="2 training interactions"):
        theory_guide(items, pos, negs, np.array([4, 1, 4]), phi_true)
