"""L2 in the trainer (twots.training.trainer): l2 * w on the sparse rows a step touches, coupled weight decay on the
dense parameters, and nothing at all when l2 = 0."""

import copy

import torch

from twots.models.stage1 import Stage1Model
from twots.training.trainer import add_row_l2, make_optimizers, split_parameters

N_USERS, N_ITEMS, N_FEATURES, MAX_FEATURES = 10, 40, 6, 2
L2 = 0.3  # large, so that a wrong or missing term shows far above float noise


def model() -> Stage1Model:
    torch.manual_seed(0)
    m = Stage1Model(N_USERS, N_ITEMS, N_FEATURES, MAX_FEATURES, item_dim=5, feature_dim=3)
    m.items.set_item_features(torch.randint(0, N_FEATURES, (N_ITEMS, MAX_FEATURES)))
    return m


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"user_id": torch.tensor([0, 3, 3, 5]), "item_id": torch.tensor([1, 2, 7, 2]),
            "neg_item_ids": torch.randint(10, 20, (4, 4), generator=gen)}  # items 20.. are never touched


def test_row_l2_adds_l2_w_on_touched_rows_and_leaves_other_rows_alone():
    m = model()
    m(batch()).backward()
    data_grad = {name: p.grad.coalesce().to_dense() for name, p in m.named_parameters() if p.grad.is_sparse}
    sparse, _ = split_parameters(m)
    add_row_l2(sparse, L2)

    touched = {"phi.weight": torch.tensor([0, 3, 5]),
               "items.item.weight": torch.cat([torch.tensor([1, 2, 7]), batch()["neg_item_ids"].unique()]).unique()}
    for name, p in m.named_parameters():
        if name not in touched:
            continue
        grad = p.grad.coalesce()
        assert torch.equal(grad.indices()[0].sort().values, touched[name].sort().values), name
        expected = data_grad[name] + L2 * p.detach() * torch.isin(torch.arange(len(p)), touched[name]).unsqueeze(1)
        torch.testing.assert_close(grad.to_dense(), expected, rtol=0, atol=1e-7)

    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for opt in make_optimizers(m, 0.05, L2):
        opt.step()
    users, items = m.phi.weight.detach(), m.items.item.weight.detach()
    assert torch.equal(users[[1, 2, 4, 6, 7, 8, 9]], before["phi.weight"][[1, 2, 4, 6, 7, 8, 9]])
    assert torch.equal(items[20:], before["items.item.weight"][20:])
    assert not torch.equal(users[[0, 3, 5]], before["phi.weight"][[0, 3, 5]])


def test_dense_parameters_get_coupled_l2():
    """Adam's weight_decay: the step of Adam on grad + l2 * w (not AdamW's decoupled decay)."""
    m = model()
    m(batch()).backward()
    feature = m.items.feature.weight
    reference = feature.detach().clone().requires_grad_()
    reference.grad = feature.grad + L2 * feature.detach()
    _, dense = split_parameters(m)
    assert [id(p) for p in dense] == [id(feature)]
    make_optimizers(m, 0.05, L2)[1].step()
    torch.optim.Adam([reference], lr=0.05).step()
    torch.testing.assert_close(feature.detach(), reference.detach(), rtol=0, atol=1e-7)


def test_zero_l2_is_the_plain_update_bit_for_bit():
    a = model()
    b = copy.deepcopy(a)
    sparse_b, dense_b = split_parameters(b)
    plain = [torch.optim.SparseAdam(sparse_b, lr=0.01), torch.optim.Adam(dense_b, lr=0.01)]
    with_l2 = make_optimizers(a, 0.01, 0.0)
    for step in range(3):
        for m, opts in ((a, with_l2), (b, plain)):
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            m(batch(step)).backward()
            if m is a:
                add_row_l2(split_parameters(a)[0], 0.0)
            for opt in opts:
                opt.step()
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
