import pytest
import torch

from twots.models.items import ItemEncoder
from twots.models.kinds import load_model, parts_without_data, register_model_class, save_model
from twots.models.losses import offer_softmax_loss
from twots.models.protocol import SequentialRecommender
from twots.models.stage1 import Stage1Model
from twots.models.two_time_scale import TwoTimeScaleModel, TwoTimeScaleOptions
from twots.training.trainer import make_optimizers, split_parameters

N_USERS, N_ITEMS, N_FEATURES, MAX_FEATURES = 12, 30, 5, 3
DIMS = dict(item_dim=6, feature_dim=2)


def stage1(item_bias: bool = False) -> Stage1Model:
    torch.manual_seed(0)
    model = Stage1Model(N_USERS, N_ITEMS, N_FEATURES, MAX_FEATURES, **DIMS, item_bias=item_bias)
    features = torch.randint(-1, N_FEATURES, (N_ITEMS, MAX_FEATURES))
    features[0] = -1  # an item without features
    features[1] = torch.tensor([2, 4, -1])
    model.items.set_item_features(features)
    model.set_known_users(torch.arange(N_USERS) < 8)  # users 8.. are new
    return model


def stage2_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "user_id": torch.tensor([0, 1, 2, 3]),
        "is_active": torch.tensor([True, False, True, False]),
        "item_ids": torch.tensor([[3, 4, 5, 6], [7, 8, -1, -1], [9, 10, 11, -1], [12, -1, -1, -1]]),
        "neg_item_ids": torch.randint(0, N_ITEMS, (4, 4, 5), generator=gen),
        "prev_item_id": torch.tensor([2, -1, 1, -1]),
    }


def test_item_vector_is_item_embedding_then_mean_of_feature_embeddings():
    model = stage1()
    enc = model.items
    vec = enc(torch.tensor([1, 0]))
    assert vec.shape == (2, 8)
    assert torch.equal(vec[0, :6], enc.item.weight[1])
    assert torch.allclose(vec[0, 6:], (enc.feature.weight[2] + enc.feature.weight[4]) / 2)
    assert torch.equal(vec[1, 6:], torch.zeros(2))  # no features: g(f) = 0
    assert "items.item_features" in model.state_dict()


def test_evaluation_gathers_from_a_catalogue_table_that_follows_weight_changes():
    enc = stage1().items.eval()
    ids = torch.tensor([[1, 0], [5, 5]])
    encoded = enc(ids)  # grad enabled: encoded directly
    with torch.no_grad():
        assert torch.equal(enc(ids), encoded)
        enc.item.weight[5].add_(1.0)
        enc.feature.weight[2].add_(1.0)
        changed = enc(ids)
    assert torch.equal(changed, enc(ids))
    assert not torch.equal(changed[1], encoded[1]) and not torch.equal(changed[0, 0, 6:], encoded[0, 0, 6:])
    with torch.no_grad():
        enc.set_item_features(torch.zeros(N_ITEMS, 1, dtype=torch.long))
        assert torch.equal(enc(ids)[..., 6:], enc.feature.weight[0].expand(2, 2, 2))


def test_training_lookup_encodes_distinct_items_once_with_the_same_values_and_gradients():
    enc = stage1().items
    ids = torch.tensor([[3, 1, 3], [1, 7, 3]])
    weights = torch.randn(2, 3, 8)
    (enc(ids) * weights).sum().backward()
    got = enc.item.weight.grad.to_dense(), enc.feature.weight.grad.clone()
    assert enc.item.weight.grad._nnz() == 3  # one sparse row per distinct item
    enc.zero_grad()
    (enc._encode(ids) * weights).sum().backward()
    assert torch.allclose(got[0], enc.item.weight.grad.to_dense(), atol=1e-6)
    assert torch.allclose(got[1], enc.feature.weight.grad, atol=1e-6)


def test_item_features_are_required_validated_and_accepted_as_lists():
    enc = ItemEncoder(4, 3, 2, 4, 2)
    with pytest.raises(RuntimeError, match="set_item_features"):
        enc(torch.tensor([0]))
    enc.set_item_features([[0, 2], [], [1], [2]])
    assert enc.item_features.tolist() == [[0, 2], [-1, -1], [1, -1], [2, -1]]
    assert torch.allclose(enc(torch.tensor([0]))[0, 4:], (enc.feature.weight[0] + enc.feature.weight[2]) / 2)
    restored = ItemEncoder(4, 3, 2, 4, 2)
    restored.load_state_dict(enc.state_dict())
    assert torch.equal(restored(torch.arange(4)), enc(torch.arange(4)))
    assert ItemEncoder(4, 0, 0, 4, 2)(torch.tensor([1])).shape == (1, 6)  # no features declared: nothing to set
    with pytest.raises(ValueError, match="ids must be in"):
        enc.set_item_features(torch.tensor([[0, 3], [0, -1], [1, 2], [-1, -1]]))
    with pytest.raises(ValueError, match="expected"):
        enc.set_item_features(torch.zeros(4, 3, dtype=torch.long))


def test_stage1_loss_scores_phi_against_the_offer_set():
    model = stage1()
    batch = {"user_id": torch.tensor([0, 5]), "item_id": torch.tensor([1, 2]),
             "neg_item_ids": torch.tensor([[3, 4, 5], [6, 7, 8]])}
    items = model.items(torch.arange(N_ITEMS))
    logits = torch.stack([
        model.phi.weight[0] @ items[[1, 3, 4, 5]].T,
        model.phi.weight[5] @ items[[2, 6, 7, 8]].T,
    ])
    expected = (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
    assert model(batch).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ccf_state_is_phi_for_known_users_and_mean_phi_for_new_users():
    model = stage1()
    state = model.init_state(torch.tensor([3, 10]), torch.tensor([False, False]))
    assert torch.equal(model.user_vector(state)[0], model.phi.weight[3])
    assert torch.allclose(model.user_vector(state)[1], model.phi.weight[:8].mean(0))
    assert model.step(state, torch.tensor([4, 5]), torch.tensor([False, False])) is state
    scores = model.score(state, torch.tensor([[1, 2], [3, 4]]))
    assert torch.allclose(scores, model.score_all(state)[:, [[1, 2], [3, 4]]].diagonal().T)
    with pytest.raises(RuntimeError, match="set_known_users"):
        Stage1Model(3, 4).init_state(torch.tensor([0]), torch.tensor([False]))


def test_active_users_start_from_phi_and_inactive_from_psi():
    model = TwoTimeScaleModel.from_stage1(stage1())
    with torch.no_grad():
        model.psi.normal_()
    h, prev, _ = model.init_state(torch.tensor([4, 5, 9]), torch.tensor([True, False, False]))
    assert torch.equal(h[0], model.phi.weight[4])
    assert torch.equal(h[1], model.psi) and torch.equal(h[2], model.psi)
    assert torch.equal(prev, torch.tensor([-1, -1, -1]))
    assert torch.equal(model.phi.weight, stage1().phi.weight)  # a copy of the trained stage-1 table


def test_phi_of_inactive_users_is_not_used_but_phi_of_active_users_is():
    model = TwoTimeScaleModel.from_stage1(stage1())
    batch = stage2_batch()
    base = model(batch).item()
    with torch.no_grad():
        model.phi.weight[1].add_(5.0)  # user 1 is inactive
        model.phi.weight[3].add_(5.0)  # user 3 is inactive
    assert model(batch).item() == base
    with torch.no_grad():
        model.phi.weight[0].add_(1.0)  # user 0 is active
    assert model(batch).item() != pytest.approx(base, abs=1e-6)


HEADS = {"2ts": {}, "2ts-plus": {"plus": True}, "2ts-plus-gw": {"plus": True, "mix": "per_group"},
         "2ts-plus-residual": {"plus": True, "mix": "residual"},
         "2ts-plus-residual-gw": {"plus": True, "mix": "residual_per_group"}}


@pytest.mark.parametrize("head", list(HEADS))
def test_stage2_loss_scores_each_step_with_the_state_before_it(head):
    """Hand-unrolled GRUs: active rows from phi_u with Theta_2, inactive rows from psi with Theta_1, padding masked;
    2TS-Plus scores with W [h, x_prev], x_prev = the batch's prev_item_id at the first step, then the last click;
    with one W per group, active rows with their own W."""
    model = TwoTimeScaleModel.from_stage1(stage1(), TwoTimeScaleOptions(**HEADS[head]))
    plus, per_group = model.mix is not None, model.mix_active is not None
    residual = HEADS[head].get("mix", "").startswith("residual")
    with torch.no_grad():
        model.psi.normal_()
        for mix in (model.mix, model.mix_active):
            if mix is not None:
                mix.weight.normal_(std=0.3)
    batch = stage2_batch()
    users, pos, neg = [], [], []
    for row in range(4):
        active = bool(batch["is_active"][row])
        h = model.phi.weight[batch["user_id"][row]] if active else model.psi
        cell = model.gru_active if active else model.gru_inactive
        prev = int(batch["prev_item_id"][row])
        for t, item in enumerate(batch["item_ids"][row].tolist()):
            if item < 0:
                break
            x_prev = model.items(torch.tensor(prev)) if prev >= 0 else torch.zeros(8)
            mix = model.mix_active if per_group and active else model.mix
            users.append((h + mix(x_prev) if residual else mix(torch.cat([h, x_prev]))) if plus else h)
            pos.append(model.items(torch.tensor(item)))
            neg.append(model.items(batch["neg_item_ids"][row, t]))
            h = cell(model.items(torch.tensor([item])), h.unsqueeze(0))[0]
            prev = item
    expected = offer_softmax_loss(torch.stack(users), torch.stack(pos), torch.stack(neg))
    assert len(users) == 10
    assert model(batch).item() == pytest.approx(expected.item(), rel=1e-5)


def two_time_scale(options: TwoTimeScaleOptions, item_bias: bool = False) -> TwoTimeScaleModel:
    """A model of the family on the test stage 1, or from scratch (with its item features) for a single stage."""
    if not options.single_stage:
        return TwoTimeScaleModel.from_stage1(stage1(item_bias), options)
    model = TwoTimeScaleModel(N_USERS, N_ITEMS, N_FEATURES, MAX_FEATURES, **DIMS, item_bias=item_bias, options=options)
    model.items.set_item_features(stage1().items.item_features)
    return model


def stepwise_loss(model: TwoTimeScaleModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The stage-2 loss through the replay's cell-based `step`, one position at a time (the reference recurrence)."""
    item_ids, is_active = batch["item_ids"], batch["is_active"]
    start = model.init_state(batch["user_id"], is_active)
    state = (start[0], batch["prev_item_id"], *start[2:])
    users = []
    for t in range(item_ids.shape[1]):
        users.append(model.user_vector(state))
        state = model.step(state, item_ids[:, t], is_active)
    n, dim = item_ids.numel(), users[0].shape[1]
    return offer_softmax_loss(torch.stack(users, 1).reshape(n, dim),
                              model.item_vectors(item_ids.clamp(min=0)).reshape(n, dim),
                              model.item_vectors(batch["neg_item_ids"]).reshape(n, -1, dim),
                              mask=(item_ids >= 0).reshape(-1))


def random_stage2_batch(gen: torch.Generator, rows: int, length: int, active_share: float) -> dict[str, torch.Tensor]:
    """Sequences of 0..length clicks padded with -1 at the end (one full row, one of a single click)."""
    counts = torch.randint(0, length + 1, (rows,), generator=gen)
    counts[:2] = torch.tensor([length, 1])
    items = torch.randint(0, N_ITEMS, (rows, length), generator=gen)
    items[torch.arange(length)[None] >= counts[:, None]] = -1
    return {"user_id": torch.randint(0, N_USERS, (rows,), generator=gen),
            "is_active": torch.rand(rows, generator=gen) < active_share, "item_ids": items,
            "neg_item_ids": torch.randint(0, N_ITEMS, (rows, length, 5), generator=gen),
            "prev_item_id": torch.randint(-1, N_ITEMS, (rows,), generator=gen)}


@pytest.mark.parametrize("item_bias", [False, True], ids=["", "item-bias"])
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("ablation", [{}, {"start": "learned"}, {"single_stage": True}, {"items": "finetune"},
                                      {"items": "finetune", "item_lr_scale": 0.1}, {"items": "input"},
                                      {"phi_scale": True}],
                         ids=["2ts", "2-gru", "single-stage", "tuned-items", "slow-items", "input-items", "phi-scale"])
def test_fused_forward_equals_the_stepwise_cell_recurrence_with_the_same_gradients(head, ablation, item_bias):
    model = two_time_scale(TwoTimeScaleOptions(**HEADS[head], **ablation), item_bias)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def gradients(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        # Every trainable parameter gets a gradient on every batch (the ranks' all-reduce needs the same list).
        assert [n for n, p in trainable.items() if p.grad is None] == []
        return {n: p.grad.to_dense() if p.grad.is_sparse else p.grad.clone() for n, p in trainable.items()}

    # Both groups mixed; one group only (the other's fused call is skipped).
    for rows, length, active_share in [(23, 7, 0.5), (9, 5, 0.5), (6, 4, 1.0), (6, 4, 0.0)]:
        batch = random_stage2_batch(gen, rows, length, active_share)
        loss, expected_loss = model(batch), stepwise_loss(model, batch)
        assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)
        fused, expected = gradients(loss), gradients(expected_loss)
        for name in trainable:
            assert torch.allclose(fused[name], expected[name], atol=1e-6), name
        assert sum(g.abs().sum() for g in fused.values()) > 0
    single_step = random_stage2_batch(gen, 5, 1, 0.5)  # no GRU input at all
    assert model(single_step).item() == pytest.approx(stepwise_loss(model, single_step).item(), rel=1e-6)


def test_padding_step_keeps_the_state():
    model = TwoTimeScaleModel.from_stage1(stage1(), TwoTimeScaleOptions(plus=True))
    state = model.init_state(torch.tensor([0, 1]), torch.tensor([True, False]))
    h, prev, _ = model.step(state, torch.tensor([-1, 7]), torch.tensor([True, False]))
    assert torch.equal(h[0], state[0][0]) and prev[0] == -1
    assert not torch.equal(h[1], state[0][1]) and prev[1] == 7


def test_stage2_step_leaves_frozen_stage1_parameters_bit_identical():
    s1 = stage1()
    model = TwoTimeScaleModel.from_stage1(s1, TwoTimeScaleOptions(plus=True))
    with torch.no_grad():
        model.psi.normal_()  # from psi = 0 the inactive GRU's first step gives weight_hh no gradient
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("phi.", "items."))}
    trained = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    assert set(trained) == {"psi", "mix.weight", "mix.bias"} | {
        f"gru_{g}.{w}_{x}" for g in ("active", "inactive") for w in ("weight", "bias") for x in ("ih", "hh")}
    sparse, dense = split_parameters(model)
    assert sparse == []
    optimizer = torch.optim.Adam(dense, lr=0.1)
    model(stage2_batch()).backward()
    optimizer.step()
    for key, value in model.state_dict().items():
        if key in frozen:
            assert torch.equal(value, frozen[key]), key
    for key, value in model.named_parameters():
        if key in trained:
            assert not torch.equal(value, trained[key]), key
    assert all(p.grad is None for p in model.items.parameters()) and model.phi.weight.grad is None


def test_tuned_items_variant_trains_the_items_and_leaves_phi_bit_identical():
    model = TwoTimeScaleModel.from_stage1(stage1(item_bias=True), TwoTimeScaleOptions(items="finetune"))
    phi = model.phi.weight.detach().clone()
    items = {k: v.detach().clone() for k, v in model.items.named_parameters()}
    sparse, dense = split_parameters(model)
    assert {id(p) for p in sparse} == {id(model.items.item.weight), id(model.items.bias.weight)}
    assert id(model.items.feature.weight) in {id(p) for p in dense} and not model.phi.weight.requires_grad
    model(stage2_batch()).backward()
    torch.optim.SparseAdam(sparse, lr=0.1).step()
    torch.optim.Adam(dense, lr=0.1).step()
    assert torch.equal(model.phi.weight, phi) and model.phi.weight.grad is None
    for name, value in model.items.named_parameters():
        assert not torch.equal(value, items[name]), name
    with pytest.raises(ValueError, match="single_stage trains phi and items from scratch"):
        TwoTimeScaleOptions(single_stage=True, items="finetune")


def test_single_stage_ablation_trains_phi_and_items_with_sparse_gradients():
    model = TwoTimeScaleModel(N_USERS, N_ITEMS, N_FEATURES, MAX_FEATURES, **DIMS,
                              options=TwoTimeScaleOptions(single_stage=True))
    model.items.set_item_features(stage1().items.item_features)
    sparse, dense = split_parameters(model)
    assert {id(p) for p in sparse} == {id(model.phi.weight), id(model.items.item.weight)}
    assert id(model.items.feature.weight) in {id(p) for p in dense}  # small table, dense gradient
    before = model.phi.weight.detach().clone()
    model(stage2_batch()).backward()
    assert model.phi.weight.grad.is_sparse
    torch.optim.SparseAdam(sparse, lr=0.1).step()
    changed = (model.phi.weight != before).any(1)
    assert changed[[0, 2]].all()  # the active users of the batch
    assert not changed[4:].any()  # users not in the batch


def test_two_gru_ablation_has_no_phi_and_a_learned_active_start():
    model = TwoTimeScaleModel.from_stage1(stage1(), TwoTimeScaleOptions(start="learned"))
    assert model.phi is None
    with torch.no_grad():
        model.psi_active.fill_(0.5)
    h, _, _ = model.init_state(torch.tensor([0, 1]), torch.tensor([True, False]))
    assert torch.equal(h[0], torch.full((8,), 0.5)) and torch.equal(h[1], model.psi)
    model(stage2_batch()).backward()
    assert model.psi_active.grad.abs().sum() > 0


def test_plus_user_vector_uses_the_previous_item():
    model = TwoTimeScaleModel.from_stage1(stage1(), TwoTimeScaleOptions(plus=True))
    state = model.init_state(torch.tensor([0, 1]), torch.tensor([True, False]))
    assert torch.equal(model.user_vector(state), state[0])  # W starts as [I, 0]
    with torch.no_grad():
        model.mix.weight.normal_()
    h = state[0]
    x_prev = model.items(torch.tensor([4]))
    with_prev = model.user_vector((h, torch.tensor([4, -1]), torch.tensor([True, False])))
    assert torch.allclose(with_prev[0], model.mix(torch.cat([h[0], x_prev[0]])), atol=1e-6)
    assert torch.allclose(with_prev[1], model.mix(torch.cat([h[1], torch.zeros(8)])), atol=1e-6)
    batch = stage2_batch()
    base = model(batch).item()
    batch["prev_item_id"] = torch.tensor([5, -1, 1, -1])  # row 0's previous item changes
    assert model(batch).item() != pytest.approx(base, abs=1e-6)

    plain = TwoTimeScaleModel.from_stage1(stage1())
    assert plain(batch).item() == plain(stage2_batch()).item()


def test_group_mix_gives_each_user_group_its_own_w():
    """2ts-plus-gw: active users' vectors go through mix_active, inactive and new users' through mix; both start as
    [I, 0]; a group's loss reaches only its own W, so after training on both groups the two Ws differ."""
    with pytest.raises(ValueError, match="needs plus=True"):
        TwoTimeScaleOptions(mix="per_group")
    model = TwoTimeScaleModel.from_stage1(stage1(), TwoTimeScaleOptions(plus=True, mix="per_group"))
    assert torch.equal(model.mix.weight, model.mix_active.weight) and torch.equal(model.mix.bias, model.mix_active.bias)
    with torch.no_grad():
        model.psi.normal_()
        model.mix_active.weight.normal_(std=0.3)
    users, active = torch.tensor([0, 1, 9]), torch.tensor([True, False, False])  # active, inactive, new
    state = model.step(model.init_state(users, active), torch.tensor([4, 5, 6]), active)
    assert torch.equal(state[2], active)  # the group travels with the state through step
    h_prev = torch.cat([state[0], model.items(torch.tensor([4, 5, 6]))], dim=-1)
    vectors = model.user_vector(state)
    assert torch.allclose(vectors[0], model.mix_active(h_prev[0]), atol=1e-6)
    assert torch.allclose(vectors[1:], model.mix(h_prev[1:]), atol=1e-6)
    assert not torch.allclose(vectors[0], model.mix(h_prev[0]), atol=1e-3)

    batch = stage2_batch()  # rows 0 and 2 active, 1 and 3 inactive
    for group, own, other in ((True, model.mix_active, model.mix), (False, model.mix, model.mix_active)):
        rows = (batch["is_active"] == group).nonzero().squeeze(1)
        model.zero_grad(set_to_none=True)
        model({k: v[rows] for k, v in batch.items()}).backward()
        assert own.weight.grad.abs().sum() > 0 and own.bias.grad.abs().sum() > 0, group
        assert torch.count_nonzero(other.weight.grad) == 0 and torch.count_nonzero(other.bias.grad) == 0, group

    fresh = TwoTimeScaleModel.from_stage1(stage1(), TwoTimeScaleOptions(plus=True, mix="per_group"))
    optimizer = torch.optim.Adam(split_parameters(fresh)[1], lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        fresh(batch).backward()
        optimizer.step()
    start = _identity(fresh.mix.weight.shape[0])
    assert not torch.equal(fresh.mix.weight, start) and not torch.equal(fresh.mix_active.weight, start)
    assert (fresh.mix.weight - fresh.mix_active.weight).abs().max() > 1e-3


def _identity(dim: int) -> torch.Tensor:
    return torch.cat([torch.eye(dim), torch.zeros(dim, dim)], dim=1)


@pytest.mark.parametrize("build", [
    lambda: stage1(),
    lambda: TwoTimeScaleModel.from_stage1(stage1(), TwoTimeScaleOptions(plus=True)),
    lambda: TwoTimeScaleModel.from_stage1(stage1(), TwoTimeScaleOptions(plus=True, mix="per_group")),
    lambda: TwoTimeScaleModel.from_stage1(stage1(), TwoTimeScaleOptions(start="learned")),
])
def test_save_load_round_trip_gives_identical_scores(tmp_path, build):
    model = build()
    for p in model.parameters():
        with torch.no_grad():
            p.add_(torch.randn_like(p) * 0.1)
    users, active = torch.tensor([0, 3, 9]), torch.tensor([True, False, False])
    state = model.step(model.init_state(users, active), torch.tensor([1, 2, 3]), active)
    save_model(tmp_path / "m" / "model.pt", model)
    loaded = load_model(tmp_path / "m" / "model.pt")
    assert type(loaded) is type(model) and loaded.hparams == model.hparams and not loaded.training
    assert torch.equal(loaded.items.item_features, model.items.item_features)
    loaded_state = loaded.step(loaded.init_state(users, active), torch.tensor([1, 2, 3]), active)
    assert torch.equal(loaded.score_all(loaded_state), model.score_all(state))


class _Popularity(SequentialRecommender):
    def __init__(self, n_items: int):
        super().__init__()
        self.hparams = dict(n_items=n_items)
        self.bias = torch.nn.Parameter(torch.randn(n_items, 1))

    def init_state(self, user_ids, is_active):
        return (torch.ones(len(user_ids), 1),)

    def step(self, state, item_ids, is_active):
        return state

    def user_vector(self, state):
        return state[0]

    def item_vectors(self, item_ids):
        return self.bias[item_ids]


def test_other_classes_register_and_unknown_classes_fail(tmp_path):
    model = _Popularity(5)
    with pytest.raises(ValueError, match="not a registered model class"):
        save_model(tmp_path / "p.pt", model)
    register_model_class(_Popularity)
    save_model(tmp_path / "p.pt", model)
    assert torch.load(tmp_path / "p.pt", weights_only=True)["class"] == "_Popularity"
    state = model.init_state(torch.tensor([0]), torch.tensor([False]))
    assert torch.equal(load_model(tmp_path / "p.pt").score_all(state), model.score_all(state))
    with pytest.raises(ValueError, match="already registered"):
        register_model_class(type("_Popularity", (Stage1Model,), {}))
    torch.save({"class": "Nope", "hparams": {}, "state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="unknown model class 'Nope'"):
        load_model(tmp_path / "x.pt")


def test_files_tagged_with_the_recipe_and_flags_still_load(tmp_path):
    """Files saved before the class tag named the recipe, and before the options record held the five flags."""
    torch.manual_seed(0)
    model = TwoTimeScaleModel(n_users=4, n_items=6, options=TwoTimeScaleOptions(plus=True, mix="per_group"))
    old = {k: v for k, v in model.hparams.items() if k not in ("options", "state_scale")}
    old.update(plus=True, use_phi=True, freeze_stage1=True, group_mix=True, train_items=False)
    torch.save({"kind": "2ts", "hparams": old, "state_dict": model.state_dict()}, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt")
    assert type(loaded) is TwoTimeScaleModel and loaded.options == model.options
    assert torch.equal(loaded.gru_active.weight_hh, model.gru_active.weight_hh)


# ---- the settings behind the ablations (TwoTimeScaleOptions) -------------------------------------------------------

def test_residual_mix_leaves_phi_unchanged_while_w2_is_zero_and_keeps_h_after_training():
    """2TS-Plus with the identity kept fixed: u = h + W2 x_prev, W2 = 0 at start, so an active user's first vector is
    exactly phi whatever the last item; W2 learns, and u - W2 x_prev is still h."""
    for mix in ("residual", "residual_per_group"):
        model = TwoTimeScaleModel.from_stage1(stage1(), TwoTimeScaleOptions(plus=True, mix=mix))
        users, active = torch.tensor([0, 1]), torch.tensor([True, False])
        start = model.init_state(users, active)
        with_prev = (start[0], torch.tensor([4, 7]), active)
        assert torch.equal(model.user_vector(with_prev)[0], model.phi.weight[0])
        assert torch.equal(model.user_vector(with_prev)[1], model.psi)
        optimizer = torch.optim.Adam(split_parameters(model)[1], lr=0.05)
        for _ in range(3):
            optimizer.zero_grad()
            model(stage2_batch()).backward()
            optimizer.step()
        w2 = model.mix_active if mix == "residual_per_group" else model.mix
        assert w2.weight.abs().max() > 0
        x_prev = model.items(torch.tensor([4]))[0]
        assert torch.allclose(model.user_vector(with_prev)[0] - w2(x_prev), model.phi.weight[0], atol=1e-6)
        if mix == "residual_per_group":  # the inactive rows' W2 learned on its own
            assert not torch.equal(model.mix.weight, model.mix_active.weight)


def test_input_items_train_the_grus_input_table_and_never_the_scoring_vectors():
    model = TwoTimeScaleModel.from_stage1(stage1(item_bias=True), TwoTimeScaleOptions(items="input"))
    ids = torch.arange(N_ITEMS)
    assert torch.equal(model.item_inputs(ids), model.items(ids))  # starts as a copy
    scoring = {k: v.clone() for k, v in model.items.state_dict().items()}
    optimizers = make_optimizers(model, lr=0.1)
    model(stage2_batch()).backward()
    for optimizer in optimizers:
        optimizer.step()
    assert all(torch.equal(v, scoring[k]) for k, v in model.items.state_dict().items())
    assert not torch.equal(model.item_inputs(ids), model.items(ids))
    state = model.init_state(torch.tensor([1]), torch.tensor([False]))
    moved = model.step(state, torch.tensor([5]), torch.tensor([False]))[0]
    assert torch.allclose(moved, model.gru_inactive(model.item_inputs(torch.tensor([5])), state[0]), atol=1e-6)


def test_finetuned_items_get_their_own_learning_rate():
    model = TwoTimeScaleModel.from_stage1(stage1(), TwoTimeScaleOptions(items="finetune", item_lr_scale=0.1))
    sparse, dense = make_optimizers(model, lr=0.02)
    lrs = {id(p): group["lr"] for opt in (sparse, dense) for group in opt.param_groups for p in group["params"]}
    assert lrs[id(model.items.item.weight)] == pytest.approx(0.002)
    assert lrs[id(model.items.feature.weight)] == pytest.approx(0.002)
    assert lrs[id(model.gru_active.weight_hh)] == lrs[id(model.psi)] == 0.02
    with pytest.raises(ValueError, match="item_lr_scale"):
        TwoTimeScaleOptions(item_lr_scale=0.1)  # only with items="finetune"


def test_phi_scale_runs_the_active_gru_inside_its_range_and_starts_as_phi():
    s1 = stage1()
    with torch.no_grad():
        s1.phi.weight.mul_(40)  # entries far beyond the GRU's (-1, 1)
    model = TwoTimeScaleModel.from_stage1(s1, TwoTimeScaleOptions(phi_scale=True))
    known = s1.phi.weight[s1.known_users]
    assert model.state_scale == pytest.approx(float(known.detach().abs().max()))
    users, active = torch.tensor([0, 1]), torch.tensor([True, False])
    state = model.init_state(users, active)
    assert state[0][0].abs().max() <= 1 + 1e-6
    assert torch.allclose(model.user_vector(state)[0], s1.phi.weight[0], atol=1e-5)
    assert torch.equal(model.user_vector(state)[1], model.psi)  # inactive users are not scaled
    stepped = model.step(state, torch.tensor([3, 3]), active)
    assert torch.allclose(model.user_vector(stepped)[0], model.state_scale * model.gru_active(
        model.items(torch.tensor([3])), state[0][:1])[0], atol=1e-5)


def test_truncated_backpropagation_keeps_the_loss_and_cuts_the_gradient_at_the_windows():
    gen = torch.Generator().manual_seed(5)
    batch = random_stage2_batch(gen, 12, 9, 0.5)
    full = TwoTimeScaleModel.from_stage1(stage1())
    with torch.no_grad():
        full.psi.normal_(generator=gen)
    cut = TwoTimeScaleModel.from_stage1(stage1(), TwoTimeScaleOptions(bptt_window=3))
    cut.load_state_dict(full.state_dict())
    whole = TwoTimeScaleModel.from_stage1(stage1(), TwoTimeScaleOptions(bptt_window=9))
    whole.load_state_dict(full.state_dict())
    losses = [m(batch) for m in (full, cut, whole)]
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=1e-6)  # the same forward values
    grads = []
    for model, loss in zip((full, cut, whole), losses):
        loss.backward()
        grads.append(model.gru_inactive.weight_hh.grad.clone())
    assert torch.allclose(grads[2], grads[0], atol=1e-6)  # a window as long as the rows cuts nothing
    assert not torch.allclose(grads[1], grads[0], atol=1e-4)
    # psi starts the inactive rows: with the cut, only the losses up to the first window's last state reach it (the
    # start scores position 0, the window's 3 states positions 1-3).
    first = {k: (v[:, :4] if k in ("item_ids", "neg_item_ids") else v) for k, v in batch.items()}
    only_first = TwoTimeScaleModel.from_stage1(stage1())
    only_first.load_state_dict(full.state_dict())
    n_first, n_all = int((first["item_ids"] >= 0).sum()), int((batch["item_ids"] >= 0).sum())
    (only_first(first) * n_first / n_all).backward()
    assert torch.allclose(cut.psi.grad, only_first.psi.grad, atol=1e-6)


def test_parts_without_data_name_what_an_empty_user_group_leaves_untrained():
    assert parts_without_data("gru4rec", 0, 0) == [] and parts_without_data("2ts", 10, 10) == []
    (no_active,) = parts_without_data("2ts", 0, 10)
    assert no_active.startswith("2ts: no active users") and no_active.endswith("no user starts from phi")
    assert parts_without_data("2gru", 0, 10)[0].endswith("the active GRU gets no training rows")  # no phi to miss
    assert "psi and the inactive GRU get no training rows" in parts_without_data("2ts", 10, 0)[0]
    assert parts_without_data("2ts-oos", 10, 0) == []  # active users' first t* items train psi and the inactive GRU
