"""Online evaluation (paper section 5): replay val/test events per user in time order, batched across users.

Users are independent, so round r holds every user's r-th event. For each event: score its candidates with the
user's current state, rank the positive (metrics.ranks_from_scores), then feed the true item with `step` (online
adaptation) and record the 2-norm of the user-vector change (the paper's Fig. 4). Users start from `init_state`
followed by `steps` over their warm-up (training) items; users without warm-up items are new.

Diagnostics (docs/model.md): each event's `steps`, its place in its user's rollout from init_state (warm-up items +
its replay step: the n-th click predicted since the state was phi, psi or h0); the
mean update gate of the user's GRU at the event, for models that have one (`update_gate`); and per user group the
mean norm of the user vectors at the start (phi, psi, ...) and after the warm-up.

Users are ordered by their number of events, most first, so the users of round r are a prefix of the state and a
round is a few slices, not a gather. Candidate scoring runs in chunks of `batch_users` rows to bound memory.

Full ranking: the events marked in `full` are also ranked against the whole catalogue with the same state
(metrics.catalogue_ranks), in chunks of `full_batch` users, as scoring B users is B x n_items floats
(full_batch_for derives the chunk from a memory budget). With `exclude` (the users' training items), the items a user
clicked before the event (training history and earlier replayed events) other than the positive are left out.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch

from twots.evaluation.metrics import catalogue_ranks, ranks_from_scores
from twots.models.items import pad_lists
from twots.models.protocol import SequentialRecommender

# Users per init_state / warm-up step call: these touch no candidates, so far more rows fit than in scoring.
STATE_CHUNK = 65536
# Bytes per (user, item) of a full-ranking chunk: the float32 score and the bool comparisons against the positive.
FULL_BYTES_PER_SCORE = 6


@dataclass
class Warmup:
    """Per-user training items to run before the replay (rows of `sequences`): user_id [W], is_active [W],
    item_ids [W, L] in time order, padded with -1 at the end."""

    user_id: np.ndarray
    is_active: np.ndarray
    item_ids: np.ndarray

    def __post_init__(self):
        self.user_id = np.asarray(self.user_id, dtype=np.int64)
        self.is_active = np.asarray(self.is_active, dtype=bool)
        self.item_ids = np.asarray(self.item_ids, dtype=np.int64)
        if self.is_active.shape != self.user_id.shape or self.item_ids.ndim != 2 \
                or self.item_ids.shape[0] != len(self.user_id):
            raise ValueError("Warmup: user_id [W], is_active [W] and item_ids [W, L] must have one row per user")
        if len(np.unique(self.user_id)) != len(self.user_id):
            raise ValueError("Warmup: a user appears twice")
        valid = self.item_ids >= 0
        if (valid[:, 1:] & ~valid[:, :-1]).any():
            raise ValueError("Warmup: item_ids must be padded with -1 at the end only")

    @classmethod
    def from_lists(cls, user_id, is_active, item_lists) -> Warmup:
        """From variable-length item lists (e.g. the `item_ids` array column of `sequences`)."""
        return cls(user_id, is_active, pad_lists(item_lists))


@dataclass
class Events:
    """The events to replay (rows of `eval_candidates`): user_id, ts, event_id, item_id (the positive) [N] and
    neg_item_ids [N, C]. Any order: the replay sorts each user's events by (ts, event_id)."""

    user_id: np.ndarray
    ts: np.ndarray
    event_id: np.ndarray
    item_id: np.ndarray
    neg_item_ids: np.ndarray

    def __post_init__(self):
        self.user_id, self.ts, self.event_id, self.item_id = (
            np.asarray(a, dtype=np.int64) for a in (self.user_id, self.ts, self.event_id, self.item_id))
        # Kept in the caller's integer type: at 499 negatives per event this array dominates memory.
        self.neg_item_ids = np.asarray(self.neg_item_ids)
        n = len(self.user_id)
        if self.neg_item_ids.size and not np.issubdtype(self.neg_item_ids.dtype, np.integer):
            raise ValueError(f"Events: neg_item_ids must hold integer ids, got {self.neg_item_ids.dtype}")
        if not (self.ts.shape == self.event_id.shape == self.item_id.shape == (n,)):
            raise ValueError("Events: user_id, ts, event_id and item_id must be 1-d of one length")
        if self.neg_item_ids.ndim != 2 or self.neg_item_ids.shape[0] != n:
            raise ValueError(f"Events: neg_item_ids must be [{n}, C], got {self.neg_item_ids.shape}")

    def __len__(self) -> int:
        return len(self.user_id)

    def subset(self, keep: np.ndarray) -> Events:
        """The events where the boolean mask `keep` is true."""
        return Events(self.user_id[keep], self.ts[keep], self.event_id[keep], self.item_id[keep],
                      self.neg_item_ids[keep])


@dataclass
class History:
    """Items each user clicked in training (rows of `interactions` with split 'train'): user_id, item_id [H] pairs,
    in any order, repeats allowed. Full ranking with exclusion leaves them out."""

    user_id: np.ndarray
    item_id: np.ndarray

    def __post_init__(self):
        self.user_id = np.asarray(self.user_id, dtype=np.int64)
        self.item_id = np.asarray(self.item_id, dtype=np.int64)
        if self.user_id.ndim != 1 or self.user_id.shape != self.item_id.shape:
            raise ValueError("History: user_id and item_id must be 1-d of one length")

    def ranges(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items sorted by user, start, length): users[k]'s items are items[start[k]:start[k] + length[k]]."""
        order = np.argsort(self.user_id, kind="stable")
        sorted_users = self.user_id[order]
        start = np.searchsorted(sorted_users, users, side="left")
        return self.item_id[order], start, np.searchsorted(sorted_users, users, side="right") - start


def full_batch_for(n_items: int, memory_mb: float) -> int:
    """Users per full-ranking chunk whose scores and comparisons fit in `memory_mb` (at least 1)."""
    return max(1, int(memory_mb * 2**20 // (n_items * FULL_BYTES_PER_SCORE)))


@dataclass
class ReplayResult:
    """Per event, aligned to the input events: rank of the positive among its candidates, its rank among the whole
    catalogue (full_rank, NaN where not asked), step (1 = the user's first replayed event), change = ||user vector
    after feeding the event - before||_2, the user's group, steps (the event's place in the rollout from init_state:
    the user's warm-up items + step) and gate (the mean update gate of the step that fed the event,
    NaN for models without one); full_seconds: time spent in full ranking. norms: per group ("active", "inactive",
    "new") the mean ||user vector|| at init_state ("start") and after the warm-up ("warmed")."""

    rank: np.ndarray
    full_rank: np.ndarray
    step: np.ndarray
    change: np.ndarray
    is_active: np.ndarray
    is_new: np.ndarray
    steps: np.ndarray
    gate: np.ndarray
    norms: dict
    full_seconds: float = 0.0

    def change_records(self, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Columns is_active, step, change for twots.evaluation.plots.plot_embedding_change (new users count as
        inactive)."""
        keep = slice(None) if mask is None else np.asarray(mask, dtype=bool)
        return {"is_active": self.is_active[keep], "step": self.step[keep], "change": self.change[keep]}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(itertools.chain(model.parameters(), model.buffers())).device


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _spans(start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k, index) for every index in [start[k], start[k] + length[k]): many ranges gathered without a loop."""
    k = np.repeat(np.arange(len(start)), length)
    offset = np.arange(len(k)) - np.repeat(np.cumsum(length) - length, length)
    return k, start[k] + offset


class _FullRanker:
    """Ranks replayed events against the whole catalogue (see the module doc)."""

    def __init__(self, model: SequentialRecommender, device, users: np.ndarray, ordered_items: np.ndarray,
                 first: np.ndarray, batch: int, exclude: History | None):
        self.device, self.batch = device, batch
        self.n_items = model.hparams["n_items"]
        if type(model).score_all is SequentialRecommender.score_all:
            # The base score_all gathers the catalogue's vectors on every call: gather them once instead.
            items = model.item_vectors(torch.arange(self.n_items, device=device))
            self.score_all = lambda state: model.user_vector(state) @ items.T
        else:
            self.score_all = model.score_all
        self.ordered_items, self.first = ordered_items, first
        self.history = None if exclude is None else exclude.ranges(users)
        self.seconds = 0.0

    def _seen(self, rows: np.ndarray, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct (k, item) pairs: the items user rows[k] clicked before its r-th replayed event."""
        items, start, length = self.history
        k_train, at = _spans(start[rows], length[rows])
        k_replay, before = _spans(self.first[rows], np.full(len(rows), r))
        pairs = np.unique(np.concatenate([k_train * self.n_items + items[at],
                                          k_replay * self.n_items + self.ordered_items[before]]))
        return (torch.from_numpy(pairs // self.n_items).to(self.device),
                torch.from_numpy(pairs % self.n_items).to(self.device))

    def ranks(self, state, positives: torch.Tensor, rows: np.ndarray, r: int) -> np.ndarray:
        """Full ranks of the r-th events of the user rows `rows` (state and positives: one row per user row)."""
        started = time.perf_counter()
        out = np.empty(len(rows))
        for a, b in _chunks(len(rows), self.batch):
            excluded = (None, None) if self.history is None else self._seen(rows[a:b], r)
            scores = self.score_all(tuple(s[a:b] for s in state))
            out[a:b] = catalogue_ranks(scores, positives[a:b], *excluded).cpu().numpy()
        self.seconds += time.perf_counter() - started
        return out


@torch.no_grad()
def replay(model: SequentialRecommender, warmup: Warmup, events: Events, *, batch_users: int = 256,
           full: np.ndarray | None = None, full_batch: int = 64, exclude: History | None = None,
           progress_every_s: float = 30.0) -> ReplayResult:
    """Replay `events` through `model` online (see the module doc), in eval mode (restored after).
    `batch_users` bounds one scoring call to batch_users x (1 + C) candidates. `full` [N] bool: the events also
    ranked against the whole catalogue, `full_batch` users at a time; `exclude`: see the module doc."""
    if batch_users < 1 or full_batch < 1:
        raise ValueError("replay: batch_users and full_batch must be >= 1")
    full = np.zeros(len(events), dtype=bool) if full is None else np.asarray(full, dtype=bool)
    if full.shape != (len(events),):
        raise ValueError(f"replay: full must be [{len(events)}] bools, one per event, got {full.shape}")
    was_training = model.training
    model.eval()
    device = model_device(model)
    n_events = len(events)

    # Each user's events in (ts, event_id) order; users ordered by event count, most first.
    order = np.lexsort((events.event_id, events.ts, events.user_id))
    users, first, counts = np.unique(events.user_id[order], return_index=True, return_counts=True)
    by_count = np.argsort(-counts, kind="stable")
    users, first, counts = users[by_count], first[by_count], counts[by_count]

    warm_row = _warmup_rows(warmup, users)
    is_new = warm_row < 0
    is_active = np.zeros(len(users), dtype=bool)
    is_active[~is_new] = warmup.is_active[warm_row[~is_new]]
    active_t = torch.from_numpy(is_active).to(device)
    state = _start_states(model, torch.from_numpy(users).to(device), active_t)
    start_norm = _norms(model, state)
    warmed = _warm_up(model, state, warmup, warm_row, active_t)
    warm_norm = _norms(model, state)
    groups = {"active": is_active, "inactive": ~is_active & ~is_new, "new": is_new}
    norms = {name: {"start": float(start_norm[rows].mean()) if rows.any() else None,
                    "warmed": float(warm_norm[rows].mean()) if rows.any() else None} for name, rows in groups.items()}

    ranker = _FullRanker(model, device, users, events.item_id[order], first, full_batch, exclude) if full.any() \
        else None
    rank = np.empty(n_events, dtype=np.float64)
    full_rank = np.full(n_events, np.nan)
    change = np.empty(n_events, dtype=np.float64)
    gate = np.full(n_events, np.nan)
    step = np.empty(n_events, dtype=np.int64)
    user_row = np.empty(n_events, dtype=np.int64)
    started, last_log, done = time.monotonic(), time.monotonic(), 0
    rounds = int(counts.max(initial=0))
    for r in range(rounds):
        n_users = np.searchsorted(-counts, -r, side="left")  # users with more than r events
        for a, b in _chunks(n_users, batch_users):
            ev = order[first[a:b] + r]
            sub = tuple(s[a:b] for s in state)
            pos_items = torch.from_numpy(events.item_id[ev]).to(device)
            negatives = torch.from_numpy(events.neg_item_ids[ev]).to(device, torch.long)
            candidates = torch.cat([pos_items[:, None], negatives], 1)
            scores = model.score(sub, candidates)
            rank[ev] = ranks_from_scores(scores[:, 0], scores[:, 1:]).cpu().numpy()
            chosen = np.flatnonzero(full[ev])
            if len(chosen):
                idx = torch.from_numpy(chosen).to(device)
                full_rank[ev[chosen]] = ranker.ranks(tuple(s[idx] for s in sub), pos_items[idx], a + chosen, r)
            before = model.user_vector(sub)
            gates = model.update_gate(sub, pos_items, active_t[a:b])
            if gates is not None:
                gate[ev] = gates.cpu().numpy()
            new = model.step(sub, pos_items, active_t[a:b])
            change[ev] = torch.linalg.vector_norm(model.user_vector(new) - before, dim=1).cpu().numpy()
            step[ev] = r + 1
            user_row[ev] = np.arange(a, b)
            for s, n in zip(state, new):
                s[a:b] = n
        done += n_users
        if time.monotonic() - last_log > progress_every_s:
            last_log = time.monotonic()
            rate = done / (last_log - started)
            print(f"[replay] round {r + 1}/{rounds}: {done:,}/{n_events:,} events, {rate:,.0f} events/s, "
                  f"{(n_events - done) / rate:.0f} s left"
                  + (f", full ranking {ranker.seconds:.0f}s" if ranker else ""), flush=True)
    model.train(was_training)

    return ReplayResult(rank=rank, full_rank=full_rank, step=step, change=change, is_active=is_active[user_row],
                        is_new=is_new[user_row], steps=warmed[user_row] + step, gate=gate, norms=norms,
                        full_seconds=ranker.seconds if ranker else 0.0)


def _warmup_rows(warmup: Warmup, users: np.ndarray) -> np.ndarray:
    """Each replayed user's row of `warmup` (-1: a new user, without one)."""
    warm_row = np.full(len(users), -1, dtype=np.int64)
    if len(warmup.user_id):
        warm_sorted = np.argsort(warmup.user_id)
        pos = np.minimum(np.searchsorted(warmup.user_id[warm_sorted], users), len(warm_sorted) - 1)
        hit = warmup.user_id[warm_sorted[pos]] == users
        warm_row[hit] = warm_sorted[pos[hit]]
    return warm_row


def _start_states(model: SequentialRecommender, users: torch.Tensor, is_active: torch.Tensor) -> tuple:
    """init_state of every replayed user, in chunks."""
    return tuple(torch.cat(parts) for parts in zip(*(
        model.init_state(users[a:b], is_active[a:b]) for a, b in _chunks(len(users), STATE_CHUNK))))


def _warm_up(model: SequentialRecommender, state: tuple, warmup: Warmup, warm_row: np.ndarray,
             is_active: torch.Tensor) -> np.ndarray:
    """Feed every user with a warm-up row its items (`steps`), in place; returns each user's warm-up length. Users go
    longest first, in chunks whose items are cut to the chunk's longest history."""
    device = is_active.device
    warm_users = np.flatnonzero(warm_row >= 0)
    warm_len = (warmup.item_ids[warm_row[warm_users]] >= 0).sum(1)
    by_len = np.argsort(-warm_len, kind="stable")
    warm_users, warm_len = warm_users[by_len], warm_len[by_len]
    for a, b in _chunks(len(warm_users), STATE_CHUNK):
        rows = warm_users[a:b]
        idx = torch.from_numpy(rows).to(device)
        items = torch.from_numpy(warmup.item_ids[warm_row[rows], :warm_len[a]]).to(device)
        new = model.steps(tuple(s[idx] for s in state), items, is_active[idx])
        for s, n in zip(state, new):
            s[idx] = n
    warmed = np.zeros(len(warm_row), dtype=np.int64)
    warmed[warm_users] = warm_len
    return warmed


def _norms(model: SequentialRecommender, state) -> np.ndarray:
    """||user vector|| of every row of `state`, in chunks."""
    rows = len(state[0])
    return np.concatenate([torch.linalg.vector_norm(model.user_vector(tuple(s[a:b] for s in state)), dim=1)
                           .cpu().numpy() for a, b in _chunks(rows, STATE_CHUNK)]) if rows else np.zeros(0)
