"""Baselines of the paper's comparison: Popularity, SumPooling, GRU4Rec, SASRec (CCF and the ablations live in
twots.models). Importing this package registers their kinds for twots.models.save_model / load_model."""

from twots.baselines.models import GRU4Rec, Popularity, SASRec, SumPooling
from twots.models import register_model_kind

KINDS = {"popularity": Popularity, "sumpooling": SumPooling, "gru4rec": GRU4Rec, "sasrec": SASRec}
for _kind, _cls in KINDS.items():
    register_model_kind(_kind, _cls)

__all__ = ["GRU4Rec", "KINDS", "Popularity", "SASRec", "SumPooling"]
