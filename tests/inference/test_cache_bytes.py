"""UserCache bytes: exact fp32 round trip, fp16 close enough, APPEND = byte extension, bad bytes rejected."""

import struct

import pytest
import torch
from inference_helpers import MAX_LEN, N_ITEMS, make_model, random_history

from model.inference import CacheFormatError, Engine, RecRequest, UserCache, cache_nbytes, read_header
from model.inference.cache import HEADER_SIZE


@pytest.fixture
def plr_engine():
    return Engine(make_model("plr"), "v1")


def test_fp32_round_trip_is_exact(engine):
    cache = engine.prefill(random_history(MAX_LEN + 3, seed=1))
    data = cache.to_bytes("fp32")
    back = engine.load_cache(data)
    assert len(data) == cache_nbytes(cache.n_ctx, 2, 16, "fp32")
    assert (back.window_start, back.history_length) == (cache.window_start, cache.history_length)
    assert back.items == cache.items
    assert torch.equal(back.rows, cache.rows) and torch.equal(back.h0, cache.h0)
    assert back.to_bytes("fp32") == data


def test_fp16_bytes_keep_the_top_10(plr_engine):
    """Bound stated in docs/inference.md: mean top-10 overlap with fp32 >= 0.9 (synthetic users)."""
    histories = [random_history(n, seed=n) for n in range(2, MAX_LEN + 6)]
    caches = [plr_engine.prefill(h[:-1]) for h in histories]
    half = [plr_engine.load_cache(c.to_bytes("fp16")) for c in caches]
    body16, body32 = (len(caches[-1].to_bytes(d)) - HEADER_SIZE for d in ("fp16", "fp32"))
    assert body16 < 0.55 * body32
    exact = plr_engine.recommend([RecRequest(h, c) for h, c in zip(histories, caches)])
    approx = plr_engine.recommend([RecRequest(h, c) for h, c in zip(histories, half)])
    overlap = [len(set(a.item_indices) & set(b.item_indices)) / 10 for a, b in zip(exact, approx)]
    assert sum(overlap) / len(overlap) >= 0.9


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_appending_extends_the_byte_string(engine, dtype):
    history = random_history(MAX_LEN, seed=5)
    old = engine.prefill(history[:3])
    stored = old.to_bytes(dtype)
    for n in range(4, MAX_LEN + 1):  # one item at a time, then the final state all at once
        new = engine.append(old, history[n - 1 : n])
        assert new.extends(old)
        tail = new.tail_bytes(old.history_length, dtype)
        assert new.write_plan(engine.load_cache(stored), dtype) == ("append", tail)
        stored += tail
        assert stored == new.to_bytes(dtype)
        old = new
    assert read_header(stored, engine.model_version).history_length == MAX_LEN


def test_a_moved_window_is_a_rewrite_not_an_append(engine):
    history = random_history(MAX_LEN + 1, seed=6)
    old = engine.prefill(history[:MAX_LEN])
    new = engine.append(old, history[MAX_LEN:])
    assert new.window_start != old.window_start and not new.extends(old)
    assert new.write_plan(old) == ("set", new.to_bytes())
    assert new.write_plan(None, "fp16") == ("set", new.to_bytes("fp16"))
    assert new.write_plan(engine.load_cache(new.to_bytes("fp16")), "fp32")[0] == "set"  # dtype changed
    with pytest.raises(ValueError):
        new.tail_bytes(new.window_start - 1)


def corrupt(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x10]) + data[index + 1 :]


def test_truncated_corrupted_and_foreign_bytes_raise_cache_format_error(engine):
    cache = engine.prefill(random_history(6, seed=2))
    data = cache.to_bytes()
    row = (len(data) - HEADER_SIZE) // cache.n_ctx
    bad = {
        "empty": b"",
        "header cut": data[: HEADER_SIZE - 1],
        "header only": data[:HEADER_SIZE],
        "row cut": data[:-3],
        "payload bit flip": corrupt(data, HEADER_SIZE + 2 * row + 20),
        "item bit flip": corrupt(data, HEADER_SIZE + row),
        "header bit flip": corrupt(data, 30),
        "magic": b"XXXX" + data[4:],
        "layout version": data[:4] + struct.pack("<H", 99) + data[6:],
    }
    for name, blob in bad.items():
        with pytest.raises(CacheFormatError):
            engine.load_cache(blob)
    with pytest.raises(CacheFormatError, match="model version"):
        UserCache.from_bytes(data, "another-version")
    other = Engine(make_model("sasrec", d_model=32), "test-v1")
    with pytest.raises(CacheFormatError, match="d_model"):
        other.load_cache(data)
    assert issubclass(CacheFormatError, ValueError)


def test_a_cache_for_another_model_version_is_refused_by_the_engine(engine):
    history = random_history(4, seed=9)
    foreign = Engine(engine.model, "other-version").prefill(history)
    with pytest.raises(ValueError, match="model version"):
        engine.recommend([RecRequest(history, foreign)])


def test_item_indices_survive_the_round_trip_at_the_top_of_the_catalogue(engine):
    cache = engine.prefill([N_ITEMS, 1, N_ITEMS])
    assert engine.load_cache(cache.to_bytes("fp16")).items == (N_ITEMS, 1, N_ITEMS)


def test_one_appended_row_encodes_to_the_same_bytes_as_the_general_path():
    """The one-row fp32 shortcut (every event's APPEND) writes exactly what the structured-array
    path writes; float64 input takes the general path (it converts), so both are compared."""
    from model.inference.cache import encode_rows

    gen = torch.Generator().manual_seed(3)
    for item in (1, 77, 2**32 - 1):
        row = torch.randn(1, 80, generator=gen, dtype=torch.float64)
        fast = encode_rows((item,), row.float(), "fp32")
        assert fast == encode_rows((item,), row, "fp32")
        assert fast == encode_rows((item,), row.float()[:, :].t().contiguous().t(), "fp32")
    wide = torch.randn(3, 80, generator=gen)
    assert encode_rows((4,), wide[1:2], "fp32") == encode_rows((4,), wide[1:2].double(), "fp32")
