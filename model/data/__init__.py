"""Data layer: load an InteractionLog, build per-user SequenceDataset, split leave-one-out.

Everything here needs numpy only; pandas is imported lazily by load_ml_latest_small alone.
"""

from model.data.loaders import (
    DATASETS,
    FORMATS,
    load_amazon2023,
    load_csv,
    load_dataset,
    load_instacart,
    load_ml100k,
    load_ml_latest_small,
    load_movielens_csv,
    load_movielens_dat,
    load_recbole_inter,
)
from model.data.log import InteractionLog
from model.data.preprocess import (
    ItemVocab,
    SequenceDataset,
    build_dataset,
    drop_repeats,
    k_core_filter,
    time_order,
)
from model.data.split import Split, leave_one_out

__all__ = [
    "DATASETS", "FORMATS", "InteractionLog", "ItemVocab", "SequenceDataset", "Split",
    "build_dataset", "drop_repeats", "k_core_filter", "leave_one_out", "load_amazon2023",
    "load_csv", "load_dataset", "load_instacart", "load_ml100k", "load_ml_latest_small",
    "load_movielens_csv", "load_movielens_dat", "load_recbole_inter", "time_order",
]
