"""Choosing t*, the activity threshold: the validation sweep and the paper's theoretical guide t** (Theorem 2.1).

Theory (paper section 2): with T training interactions a user's estimated embedding phi(z[T]) is off from the
truth phi* by E||phi(z[T]) - phi*||^2 <= Q / (T + 1), and true embeddings spread around their mean m with
Var_m = E||phi* - m||^2. The expected excess risk is smallest at t** = Q / Var_m - 1: below it, starting from the
common m (psi) beats starting from one's own noisy estimate.

Our estimators (`theory_guide`), with the stage-1 item vectors (and item biases, if any) held fixed:
- phi_u(T) := argmin_phi mean offer-set softmax loss over the user's first T training interactions + l2/2 ||phi||^2
  (the per-user convex problem of stage 1; fitted for every T of a geometric grid at once, by gradient descent);
- phi*_u := phi_u(all of the user's interactions, up to `max_events`);
- err(T) := mean over users of ||phi_u(T) - phi*_u||^2, and Q := the least-squares fit of err(T) = Q / (T + 1);
- Var_m := mean over the users of ||phi*_u - mean phi*||^2.
Users are a sample of active users (n_train > t*): only their histories are long enough to see the error decay,
and their phi* is the least noisy stand-in for the truth. Assumptions, as in the paper: each user's clicks are
i.i.d. given the user (time order ignored), T is independent of the user, and the 1/(T+1) rate holds. Both Q and
Var_m shrink with l2, but their ratio, hence t**, much less so. t** is a guide; the sweep decides.

The sweep (`sweep`) reuses one stage-1 model and, for each candidate t*, rebuilds `user_activity` and `sequences`
with the pipeline's own transforms, retrains only stage 2 and keeps the best validation MRR.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from experiments.config import CompareConfig
from experiments.tuning import Runner, TrialSpec
from pipelines.histories import full_sequences
from pipelines.views import sequences_view
from twots.data.snapshot import read_delta
from twots.data.tables import SEQUENCES, STAGE1_OFFERS, USER_ACTIVITY
from twots.models.kinds import KINDS, load_model
from twots.training.loaders import arrow_columns, fixed_shape

if TYPE_CHECKING:
    from pathlib import Path


@dataclass
class TheoryGuide:
    t_star: float                    # t** = Q / Var_m - 1 (not clipped: a negative value means "all active")
    q: float
    var_m: float
    var_m_stage1: float              # the same spread measured on the stage-1 phi of the sampled users
    error_curve: dict[int, float]    # T -> mean ||phi(T) - phi*||^2
    users: int
    l2: float
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def fit_user_embeddings(offer_vecs: torch.Tensor, lengths: torch.Tensor, l2: float, steps: int = 300,
                        lr: float = 0.05, offer_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-user regularised offer-set softmax fits on prefixes of their histories.

    offer_vecs [U, N, 1 + P, D]: item vectors of each interaction's offer set, the clicked item first;
    lengths [U, S]: for each user S prefix lengths (0 <= length <= N); offer_bias [U, N, 1 + P]: the stage-1 item
    biases b_i of the same items (fixed, added to every logit), if stage 1 has them. Returns phi [U, S, D].
    """
    users, n, _, dim = offer_vecs.shape
    steps_mask = torch.arange(n, device=offer_vecs.device).view(1, 1, n) < lengths.unsqueeze(-1)   # [U, S, N]
    weight = steps_mask / lengths.clamp(min=1).unsqueeze(-1)
    phi = torch.zeros(users, lengths.shape[1], dim, device=offer_vecs.device, requires_grad=True)
    opt = torch.optim.Adam([phi], lr=lr)
    for _ in range(steps):
        logits = torch.einsum("unkd,usd->usnk", offer_vecs, phi)
        if offer_bias is not None:
            logits = logits + offer_bias.unsqueeze(1)
        per_step = torch.logsumexp(logits, dim=-1) - logits[..., 0]                 # [U, S, N]
        loss = (per_step * weight).sum() + 0.5 * l2 * (phi ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return phi.detach()


def prefix_grid(max_events: int) -> list[int]:
    """T = 0, 1, 2, 4, ... below max_events (T = 0 is the all-zero start, the 'prior' estimate)."""
    grid, t = [0], 1
    while t < max_events:
        grid.append(t)
        t *= 2
    return grid


def theory_guide(item_vectors: torch.Tensor, item_ids: np.ndarray, neg_item_ids: np.ndarray, lengths: np.ndarray,
                 stage1_phi: torch.Tensor, *, l2: float = 0.1, steps: int = 300,
                 item_bias: torch.Tensor | None = None) -> TheoryGuide:
    """t** = Q / Var_m - 1 from a sample of active users (see the module doc for the estimators).

    item_vectors [n_items, D] (stage 1, fixed); item_ids [U, N] and neg_item_ids [U, N, P]: each user's first N
    training offer sets in time order, padded past lengths[u]; stage1_phi [U, D] the same users' stage-1 phi;
    item_bias [n_items]: stage 1's b_i when it has them (train.item_bias).
    """
    item_ids = torch.as_tensor(item_ids, dtype=torch.long)
    neg_item_ids = torch.as_tensor(neg_item_ids, dtype=torch.long)
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    users, n = item_ids.shape
    if users < 2:
        raise ValueError(f"theory_guide: need at least 2 active users, got {users}")
    if lengths.min() < 2:
        raise ValueError("theory_guide: every sampled user needs at least 2 training interactions")
    offers = torch.cat([item_ids.clamp(min=0).unsqueeze(-1), neg_item_ids.clamp(min=0)], dim=-1)
    offer_vecs = item_vectors.detach()[offers]                                      # [U, N, 1 + P, D]
    grid = [t for t in prefix_grid(int(lengths.max())) if t < int(lengths.min())]
    prefix = torch.tensor(grid).expand(users, -1)
    offer_bias = None if item_bias is None else item_bias.detach()[offers]
    phi = fit_user_embeddings(offer_vecs, torch.cat([prefix, lengths.unsqueeze(1)], dim=1), l2, steps,
                              offer_bias=offer_bias)
    phi_star = phi[:, -1]
    errors = ((phi[:, :-1] - phi_star.unsqueeze(1)) ** 2).sum(-1).mean(0)           # [len(grid)]
    curve = {t: float(e) for t, e in zip(grid, errors)}
    inv = 1.0 / (torch.tensor(grid, dtype=torch.float64) + 1)
    q = float((errors.double() * inv).sum() / (inv ** 2).sum())
    var_m = float(((phi_star - phi_star.mean(0)) ** 2).sum(-1).mean())
    stage1_phi = torch.as_tensor(stage1_phi).detach().float()
    var_m_stage1 = float(((stage1_phi - stage1_phi.mean(0)) ** 2).sum(-1).mean())
    t_star = q / var_m - 1 if var_m > 0 else math.inf
    return TheoryGuide(t_star=t_star, q=q, var_m=var_m, var_m_stage1=var_m_stage1, error_curve=curve,
                       users=users, l2=l2)


def active_user_sample(spark, data_dir: str, t_star: int, users: int, max_events: int, seed: int = 0) -> dict:
    """Up to `users` random active users (n_train > t*) with their last `max_events` training offer sets:
    user_id [U], item_ids [U, N] (-1 padded), neg_item_ids [U, N, P], lengths [U]."""
    from pyspark.sql import functions as F

    activity = read_delta(spark, data_dir, USER_ACTIVITY).where(F.col("n_train") > t_star)
    sample = activity.orderBy(F.rand(seed)).limit(users)
    rows, layout = fixed_shape(full_sequences(read_delta(spark, data_dir, STAGE1_OFFERS), sample, max_events),
                               SEQUENCES)
    cols = arrow_columns(rows.select("user_id", "item_ids", "neg_item_ids").toArrow())
    if len(cols["user_id"]) == 0:
        raise ValueError(f"no active users (n_train > {t_star}) in {data_dir} to estimate t** from")
    item_ids = cols["item_ids"]
    return {"user_id": cols["user_id"], "item_ids": item_ids,
            "neg_item_ids": cols["neg_item_ids"].reshape(len(item_ids), layout.seq_len, layout.negatives),
            "lengths": (item_ids >= 0).sum(1)}


def sweep(candidates: list[int], val_mrr, log=print) -> tuple[int, dict[int, float]]:
    """Score every candidate t* with `val_mrr(t) -> float` (2TS retrained at that t*, its best val MRR); best and
    the curve."""
    if not candidates:
        raise ValueError("t* sweep: no candidates")
    curve = {}
    for t in sorted(set(candidates)):
        curve[t] = float(val_mrr(t))
        log(f"[t_star] t* = {t}: val MRR {curve[t]:.4f}")
    best = max(curve, key=lambda t: (curve[t], -t))  # ties go to the smaller t*: fewer users need phi
    return best, curve


def choose_t_star(cfg: CompareConfig, runner: Runner, base: Path, stage1_path: str, out: Path, log=print) -> dict:
    """The 'auto' t*: the theoretical guide t** and the val sweep over the candidates (stage 1 shared)."""
    import torch

    manifest = runner.manifest
    prepared_t, last_k = manifest["config"]["t_star"], manifest["config"]["last_k"]
    stage1 = load_model(stage1_path)
    sample = active_user_sample(runner.spark, str(base), prepared_t, cfg.theory_users, cfg.theory_max_events,
                                runner.tcfg.seed)
    with torch.no_grad():
        item_vectors = stage1.items(torch.arange(manifest["n_items"]))
    item_bias = None if stage1.items.bias is None else stage1.items.bias.weight.squeeze(1)
    guide = theory_guide(item_vectors, sample["item_ids"], sample["neg_item_ids"], sample["lengths"],
                         stage1.phi.weight[torch.tensor(sample["user_id"])], l2=cfg.theory_l2,
                         item_bias=item_bias)
    log(f"[t_star] t** = Q / Var_m - 1 = {guide.q:.4f} / {guide.var_m:.4f} - 1 = {guide.t_star:.1f} "
        f"({guide.users} active users)")
    # One point of 2TS's grid for every candidate (the middle learning rate, the first l2), early-stopped like tuning,
    # all candidates in one launch.
    grid = cfg.grid("2ts")
    lr, l2 = grid.lrs[len(grid.lrs) // 2], grid.l2s[0]
    plan = KINDS["2ts"].stages[-1]
    candidates = sorted(set(cfg.t_star_candidates))
    # K = min(K, t*): an active user of t* has more than t* training items, so every row holds K of them.
    specs = [TrialSpec("2ts", plan, sequences_view(runner.spark, base, out / "views" / f"sweep-t{t}", t,
                                                   min(last_k, t)), lr, l2,
                       grid.max_epochs, grid.patience, stage1_path, f"sweep/t{t}") for t in candidates]
    scores = {t: trial.best_val_mrr for t, trial in zip(candidates, runner.train(specs))}
    best, curve = sweep(candidates, scores.__getitem__, log)
    return {"t_star": best, "curve": curve, "theory": guide.as_dict(), "lr": lr, "l2": l2,
            "max_epochs": grid.max_epochs}
