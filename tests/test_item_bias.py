"""train.item_bias: stage 1's learned per-item bias b_i (twots.models.items.ItemEncoder), added to every
score in training and scoring, carried frozen into 2TS / 2TS-Plus, off by default."""

import json

import numpy as np
import pytest
import torch

from experiments.t_star import fit_user_embeddings
from twots.cli import UserError
from twots.models.kinds import KINDS, BuildInputs, ModelDims, build_stage1, load_model, save_model
from twots.models.stage1 import Stage1Model
from twots.models.two_time_scale import TwoTimeScaleModel, TwoTimeScaleOptions
from twots.training.config import TrainConfig
from twots.training.train import train
from twots.training.trainer import make_optimizers, split_parameters

N_USERS, N_ITEMS, N_FEATURES, MAX_FEATURES = 12, 30, 5, 3
DIMS = dict(item_dim=6, feature_dim=2)


def stage1(item_bias: bool) -> Stage1Model:
    torch.manual_seed(0)
    model = Stage1Model(N_USERS, N_ITEMS, N_FEATURES, MAX_FEATURES, **DIMS, item_bias=item_bias)
    model.items.set_item_features(torch.randint(-1, N_FEATURES, (N_ITEMS, MAX_FEATURES),
                                                generator=torch.Generator().manual_seed(5)))
    model.set_known_users(torch.arange(N_USERS) < 8)
    return model


def with_random_biases(model):
    with torch.no_grad():
        model.items.bias.weight.normal_(generator=torch.Generator().manual_seed(2))
    return model.items.bias.weight.detach().squeeze(1).clone()


def test_off_by_default_with_no_bias_table_and_the_same_start_as_with_one():
    plain = stage1(False)
    assert Stage1Model(3, 4).hparams["item_bias"] is False and TrainConfig(data=".").item_bias is False
    assert plain.items.bias is None and not any("bias" in k for k in plain.state_dict())
    biased = stage1(True)
    # The bias table draws no random numbers and starts at 0: same weights, same loss, and the same scores up to
    # float rounding (score_all's appended bias column makes the matmul wider, and BLAS may then sum in another
    # order: 7e-9 apart on an AMD EPYC box).
    for name, value in plain.state_dict().items():
        assert torch.equal(value, biased.state_dict()[name]), name
    users = torch.tensor([0, 3, 9])
    state = plain.init_state(users, torch.zeros(3, dtype=torch.bool))
    torch.testing.assert_close(biased.score_all(state), plain.score_all(state), rtol=0, atol=1e-6)
    batch = {"user_id": torch.tensor([0, 5]), "item_id": torch.tensor([1, 2]),
             "neg_item_ids": torch.tensor([[3, 4, 5], [6, 7, 8]])}
    assert biased(batch).item() == plain(batch).item()


def test_scores_and_the_stage1_loss_differ_exactly_by_b_i():
    plain, biased = stage1(False), stage1(True)
    b = with_random_biases(biased)
    state = plain.init_state(torch.tensor([0, 3, 9]), torch.tensor([True, False, False]))
    torch.testing.assert_close(biased.score_all(state), plain.score_all(state) + b, rtol=0, atol=1e-6)
    candidates = torch.tensor([[1, 2, 3], [4, 4, 0], [29, 7, 8]])
    torch.testing.assert_close(biased.score(state, candidates), plain.score(state, candidates) + b[candidates],
                               rtol=0, atol=1e-6)
    # Serving's scan (user_vector @ item_vectors of the catalogue) sees the same scores.
    scan = biased.user_vector(state) @ biased.item_vectors(torch.arange(N_ITEMS)).T
    torch.testing.assert_close(scan, biased.score_all(state), rtol=0, atol=1e-6)

    batch = {"user_id": torch.tensor([0, 5]), "item_id": torch.tensor([1, 2]),
             "neg_item_ids": torch.tensor([[3, 4, 5], [6, 7, 8]])}
    items = plain.items(torch.arange(N_ITEMS))
    offers = torch.tensor([[1, 3, 4, 5], [2, 6, 7, 8]])
    logits = torch.stack([plain.phi.weight[u] @ items[o].T + b[o] for u, o in zip([0, 5], offers)])
    expected = (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
    assert biased(batch).item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_bias_is_learned_popular_items_get_a_larger_one():
    """A tiny log: item 0 is clicked in 60 % of events, item 1 in 2 %, the rest share the remainder; uniform
    negatives. After a few SparseAdam steps b_0 > b_1, and the biases moved only through training."""
    model = stage1(True)
    sparse, dense = split_parameters(model)
    assert any(p is model.items.bias.weight for p in sparse)
    gen = torch.Generator().manual_seed(11)
    optimizers = make_optimizers(model, lr=0.05)
    for _ in range(40):
        u = torch.rand(256, generator=gen)
        items = torch.where(u < 0.6, 0, torch.where(u < 0.62, 1, torch.randint(2, N_ITEMS, (256,), generator=gen)))
        negs = torch.randint(0, N_ITEMS, (256, 5), generator=gen)
        batch = {"user_id": torch.randint(0, N_USERS, (256,), generator=gen), "item_id": items, "neg_item_ids": negs}
        for opt in optimizers:
            opt.zero_grad()
        model(batch).backward()
        assert model.items.bias.weight.grad.is_sparse
        for opt in optimizers:
            opt.step()
    b = model.items.bias.weight.detach().squeeze(1)
    assert b[0] > b[1] + 0.5, b[:4]
    assert b[0] > b[2:].max()


@pytest.mark.parametrize("plus", [False, True])
def test_2ts_carries_b_i_frozen_and_scores_with_it(plus):
    s1 = stage1(True)
    b = with_random_biases(s1)
    model = TwoTimeScaleModel.from_stage1(s1, TwoTimeScaleOptions(plus=plus))
    assert model.hparams["item_bias"] is True
    assert torch.equal(model.items.bias.weight.squeeze(1), b) and not model.items.bias.weight.requires_grad
    assert all(p is not model.items.bias.weight for group in split_parameters(model) for p in group)
    with torch.no_grad():
        model.psi.normal_()
    active = torch.tensor([True, False])
    state = model.step(model.init_state(torch.tensor([0, 1]), active), torch.tensor([3, 4]), active)
    h = model.user_vector(state)[:, :-1]
    torch.testing.assert_close(model.score_all(state), h @ model.items(torch.arange(N_ITEMS)).T + b,
                               rtol=0, atol=1e-6)
    # The stage-2 loss scores offer sets with the bias too; a step leaves b_i as stage 1 left it.
    batch = {"user_id": torch.tensor([0, 1]), "is_active": active, "item_ids": torch.tensor([[3, 4], [5, -1]]),
             "neg_item_ids": torch.tensor([[[6, 7], [8, 9]], [[10, 11], [0, 0]]]),
             "prev_item_id": torch.tensor([2, -1])}
    h0 = model.init_state(batch["user_id"], active)
    users = [model.user_vector(h0)[0], model.user_vector(model.step(h0, torch.tensor([3, -1]), active))[0],
             model.user_vector(h0)[1]]
    offers = [[3, 6, 7], [4, 8, 9], [5, 10, 11]]
    if plus:  # the first step of row 0 mixes in its prev_item_id
        users[0] = model.user_vector((h0[0], torch.tensor([2, -1]), active))[0]
    logits = torch.stack([u[:-1] @ model.items(torch.tensor(o)).T + b[o] for u, o in zip(users, offers)])
    expected = (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
    loss = model(batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    _, dense = split_parameters(model)
    loss.backward()
    torch.optim.Adam(dense, lr=0.1).step()
    assert torch.equal(model.items.bias.weight.squeeze(1), b)


def test_builders_follow_the_option_and_files_round_trip(tmp_path):
    dims = ModelDims(N_USERS, N_ITEMS, N_FEATURES, MAX_FEATURES, **DIMS)
    side = tmp_path / "side.npz"
    np.savez(side, item_features=np.full((N_ITEMS, MAX_FEATURES), -1), known_users=np.ones(N_USERS, dtype=bool))
    assert build_stage1(BuildInputs(dims, str(side)), None).items.bias is None
    model = build_stage1(BuildInputs(dims, str(side), item_bias=True), None)
    b = with_random_biases(model)
    save_model(tmp_path / "stage1.pt", model)
    loaded = load_model(tmp_path / "stage1.pt")
    assert loaded.hparams["item_bias"] and torch.equal(loaded.items.bias.weight.squeeze(1), b)
    single = KINDS["2ts-singlestage"].stages[0].build(BuildInputs(dims, str(side), item_bias=True), None)
    assert single.items.bias.weight.requires_grad
    two_ts = KINDS["2ts"].stages[1].build(BuildInputs(dims, str(side)), str(tmp_path / "stage1.pt"))
    assert torch.equal(two_ts.items.bias.weight.squeeze(1), b)  # from its stage-1 model, not from the inputs
    assert {name for name, kind in KINDS.items() if kind.takes_item_bias} == {
        "ccf", "2gru", "2ts-singlestage", "2ts", "2ts-plus", "2ts-plus-gw", "2ts-coldstart-all", "2ts-tuned-items",
        "2ts-singlestage-k", "2ts-oos"}


def test_models_saved_before_the_option_load_unchanged(tmp_path):
    model = stage1(False)
    old_hparams = {k: v for k, v in model.hparams.items() if k != "item_bias"}
    torch.save({"class": "Stage1Model", "hparams": old_hparams, "state_dict": model.state_dict()}, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt")
    assert loaded.items.bias is None
    state = model.init_state(torch.tensor([0, 9]), torch.tensor([True, False]))
    assert torch.equal(loaded.score_all(loaded.init_state(torch.tensor([0, 9]), torch.tensor([True, False]))),
                       model.score_all(state))


def test_a_stage1_model_with_another_item_bias_is_refused_before_training(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"n_users": N_USERS}))
    save_model(tmp_path / "stage1.pt", stage1(True))
    cfg = TrainConfig(data=str(data), model="2ts", stage1_model=str(tmp_path / "stage1.pt"))
    with pytest.raises(UserError, match="has item_bias=True, the run item_bias=False.*--item-bias true"):
        train(cfg, spark=None)


def test_the_theory_guide_fits_phi_with_the_biases_as_fixed_offsets():
    """When b_i alone explains the clicks (the clicked item's bias is far above its negatives'), the per-user fit
    needs a much smaller phi than without biases; zero biases change nothing."""
    gen = torch.Generator().manual_seed(4)
    vecs = torch.randn(6, 8, 4, 3, generator=gen)
    lengths = torch.tensor([[2, 8]]).expand(6, -1)
    without = fit_user_embeddings(vecs, lengths, l2=0.01, steps=100)
    zero = fit_user_embeddings(vecs, lengths, l2=0.01, steps=100, offer_bias=torch.zeros(6, 8, 4))
    torch.testing.assert_close(zero, without, rtol=0, atol=0)
    bias = torch.zeros(6, 8, 4)
    bias[..., 0] = 6.0
    with_bias = fit_user_embeddings(vecs, lengths, l2=0.01, steps=100, offer_bias=bias)
    assert with_bias.norm(dim=-1).mean() < 0.5 * without.norm(dim=-1).mean()
