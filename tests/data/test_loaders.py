"""Loaders parse each real file format exactly, and fail loudly on bad input."""

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.data import (
    DATASETS,
    build_dataset,
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

FIXTURES = Path(__file__).parent / "fixtures"


def counts(log):
    return len(log), len(set(log.user_ids)), len(set(log.item_ids))


def rows(log):
    return list(zip(log.user_ids.tolist(), log.item_ids.tolist(), log.timestamps.tolist()))


def test_movielens_dat_rows_and_latin1_titles():
    log = load_movielens_dat(FIXTURES / "movielens_dat/ratings.dat")
    assert rows(log) == [
        ("1", "10", 978300760.0),
        ("1", "20", 978300760.0),
        ("2", "10", 978302109.0),
        ("1", "30", 978300000.0),
    ]
    assert log.titles == {
        "10": "Toy Story (1995)", "20": "Misérables, Les (1995)", "30": "Heat (1995)"
    }


def test_movielens_dat_min_rating_drops_low_ratings():
    log = load_movielens_dat(FIXTURES / "movielens_dat/ratings.dat", min_rating=4)
    assert rows(log) == [("1", "10", 978300760.0), ("2", "10", 978302109.0)]


def test_movielens_csv_rows_and_quoted_titles():
    log = load_movielens_csv(FIXTURES / "movielens_csv/ratings.csv")
    assert rows(log) == [
        ("1", "31", 1260759144.0),
        ("1", "1029", 1260759144.0),
        ("2", "31", 1260759100.0),
        ("1", "1061", 1260759000.0),
    ]
    assert log.titles["1029"] == "American President, The (1995)"


@pytest.mark.parametrize("file", ["reviews.jsonl", "reviews.csv"])
def test_amazon2023_jsonl_and_csv_agree(file):
    log = load_amazon2023(FIXTURES / "amazon" / file)
    assert rows(log) == [
        ("AE1", "P01", 1588687728923.0),
        ("AE1", "P02", 1588687728923.0),
        ("AF2", "P01", 1500000000000.0),
    ]
    assert log.name == "reviews"


def test_amazon2023_reads_gzip(tmp_path):
    gz = tmp_path / "CDs_and_Vinyl.jsonl.gz"
    gz.write_bytes(gzip.compress((FIXTURES / "amazon/reviews.jsonl").read_bytes()))
    log = load_amazon2023(gz, min_rating=3)
    assert rows(log) == [("AE1", "P01", 1588687728923.0), ("AF2", "P01", 1500000000000.0)]


def test_recbole_inter_with_titles_and_without_timestamp():
    log = load_recbole_inter(FIXTURES / "recbole/toy.inter")
    assert rows(log) == [
        ("196", "242", 881250949.0), ("196", "302", 881250949.0), ("22", "242", 875747190.0)
    ]
    assert log.titles == {"242": "Kolya (1996)", "302": "L.A. Confidential (1997)"}
    no_time = load_recbole_inter(FIXTURES / "recbole/no_time.inter")
    assert rows(no_time) == [("7", "a", 0.0), ("7", "b", 1.0), ("8", "a", 2.0)]
    assert no_time.titles == {}


def test_generic_csv_column_mapping():
    path = FIXTURES / "generic/events.csv"
    log = load_csv(path, "session", "sku", "ts", sep=";", rating_col="score", min_rating=1)
    assert rows(log) == [("s1", "x", 3.0), ("s2", "x", 1.0)]
    untimed = load_csv(path, "session", "sku", sep=";")
    assert untimed.timestamps.tolist() == [0.0, 1.0, 2.0]


def test_load_dataset_specs_reach_the_format_loaders():
    dat = load_dataset(f"movielens-dat:{FIXTURES}/movielens_dat/ratings.dat?min_rating=4")
    assert len(dat) == 2
    csv_log = load_dataset(f"csv:{FIXTURES}/generic/events.csv?user=session&item=sku&time=ts&sep=;")
    assert rows(csv_log)[0] == ("s1", "x", 3.0)
    assert len(load_dataset(f"amazon2023:{FIXTURES}/amazon/reviews.jsonl")) == 3
    assert len(load_dataset(f"recbole-inter:{FIXTURES}/recbole/toy.inter")) == 3
    assert len(load_dataset(f"movielens-csv:{FIXTURES}/movielens_csv/ratings.csv")) == 4


def test_load_dataset_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="ml-100k"):
        load_dataset("ml-1m")
    with pytest.raises(ValueError, match="unknown options.*colour"):
        load_dataset(f"recbole-inter:{FIXTURES}/recbole/toy.inter?colour=red")
    with pytest.raises(ValueError, match="missing options.*item_col"):
        load_dataset(f"csv:{FIXTURES}/generic/events.csv?user=session")


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "ratings.dat"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_movielens_dat(missing)


def test_missing_columns_are_named_with_the_found_ones(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,itemId,rating\n1,2,3\n")
    expected = r"missing columns \['movieId', 'timestamp'\].*found.*itemId"
    with pytest.raises(ValueError, match=expected):
        load_movielens_csv(path)
    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text('{"user_id": "u", "asin": "a", "rating": 5, "timestamp": 1}\n')
    with pytest.raises(ValueError, match="parent_asin"):
        load_amazon2023(jsonl)


def test_empty_and_fully_filtered_inputs_raise(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_csv(empty, "u", "i")
    header_only = tmp_path / "header.csv"
    header_only.write_text("u,i\n")
    with pytest.raises(ValueError, match="no interactions"):
        load_csv(header_only, "u", "i")
    with pytest.raises(ValueError, match="rating >= 9"):
        load_movielens_dat(FIXTURES / "movielens_dat/ratings.dat", min_rating=9)


def test_ragged_rows_and_text_timestamps_raise(tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("u,i,t\n1,2,3\n1,2\n")
    with pytest.raises(ValueError, match="ragged.csv:3"):
        load_csv(ragged, "u", "i", "t")
    texty = tmp_path / "texty.csv"
    texty.write_text("u,i,t\n1,2,yesterday\n")
    with pytest.raises(ValueError, match="'t' is not numeric"):
        load_csv(texty, "u", "i", "t")


def test_model_data_imports_without_pandas():
    code = "import sys, model.data; assert 'pandas' not in sys.modules, 'pandas imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


# --- the real packaged datasets (counts from docs/datasets.md) --------------------------------


def test_registry_lists_the_packaged_datasets():
    assert set(DATASETS) == {"ml-100k", "ml-latest-small", "instacart"}


def test_ml100k_raw_and_5core_counts():
    log = load_ml100k()
    assert counts(log) == (100_000, 943, 1_682)
    assert log.titles["1"] == "Toy Story (1995)"
    stats = build_dataset(log, k_core=5).stats()
    assert (stats["interactions"], stats["users"], stats["items"]) == (99_287, 943, 1_349)


def test_ml_latest_small_raw_and_5core_counts():
    log = load_ml_latest_small()
    assert counts(log) == (100_004, 671, 9_066)
    assert log.titles["31"] == "Dangerous Minds (1995)"
    stats = build_dataset(log, k_core=5).stats()
    assert (stats["interactions"], stats["users"], stats["items"]) == (90_072, 671, 3_496)


def test_instacart_first_purchases_and_repeats():
    repeats = load_instacart(repeats=True)
    assert counts(repeats) == (150_000, 593, 14_190)
    first = load_instacart()
    assert len(first) == 54_137
    pairs = np.char.add(np.char.add(first.user_ids, "|"), first.item_ids)
    assert len(np.unique(pairs)) == len(first)
