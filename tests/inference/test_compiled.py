"""Compiled graphs (AOTInductor) == the eager engine, on every output, across lengths through the
window edge, alone and in small batches; missing or unusable packages are refused with a reason.

One real build of a tiny PLR (synthetic weights) for the module: ~40 s of C++ compile, the
price of testing the graphs the server runs (SASRec's graphs are checked by `make bench`)."""

import json
import shutil

import numpy as np
import pytest
import torch
from inference_helpers import MAX_LEN, make_model, random_history

from model.inference import Advance, Engine, RecRequest
from model.inference.engine import COMPILED_MAX_BATCH
from model.inference.compiled import (
    MANIFEST,
    CompiledUnavailable,
    build_packages,
    load_graphs,
    package_key,
)

RTOL = 1e-5  # relative to each output's largest magnitude


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    model = make_model("plr", seed=3)
    root = tmp_path_factory.mktemp("compiled")
    build_packages(model, "tiny-plr", root, autotune=False)  # autotune: minutes more
    return model, root


@pytest.fixture(scope="module")
def engines(packages):
    model, root = packages
    eager, compiled = Engine(model, "tiny-plr"), Engine(model, "tiny-plr")
    compiled.attach_graphs(load_graphs(model, "tiny-plr", root))
    return eager, compiled


def assert_close(actual, expected):
    scale = expected.abs().max().item() or 1.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=RTOL * scale)


def assert_same_state(a, b):
    assert_close(b.vector, a.vector)
    assert sorted(a.details) == sorted(b.details) == ["gate", "stream_vectors"]
    for key in a.details:
        assert_close(b.details[key], a.details[key])
    assert (a.seen == b.seen).all()


def test_every_length_through_the_window_edge_matches_eager(engines):
    eager, compiled = engines
    for n in range(1, MAX_LEN + 6):  # prefill (1 eager, >= 2 compiled) and appends
        history = random_history(n, seed=50 + n)
        a = eager.recommend([RecRequest(history, k=10)])[0]
        b = compiled.recommend([RecRequest(history, k=10)])[0]
        assert_same_state(a.state, b.state)
        assert_close(b.cache.rows, a.cache.rows)
        if n > 1:
            prefix = eager.prefill(history[:-1])
            ((ca, sa),) = eager.advance([Advance(history[-1:], prefix, a.state.seen)])
            ((cb, sb),) = compiled.advance([Advance(history[-1:], prefix, a.state.seen)])
            assert_same_state(sa, sb)
            assert_close(cb.rows, ca.rows)
            assert (cb.window_start, cb.items) == (ca.window_start, ca.items)
            assert cb.extends(prefix) == ca.extends(prefix)  # same cache growth (append or not)


def test_small_batches_run_compiled_and_large_ones_eager_with_the_same_answers(engines):
    eager, compiled = engines
    lengths = [3, 5, 7, 9, 2, 4] * (COMPILED_MAX_BATCH // 6 + 1)
    histories = [random_history(n, seed=90 + i) for i, n in enumerate(lengths)]
    assert 3 <= COMPILED_MAX_BATCH < len(histories)
    for batch in (histories[:3], histories):  # user by user, then one eager batch
        a = eager.recommend([RecRequest(h, k=8) for h in batch])
        b = compiled.recommend([RecRequest(h, k=8) for h in batch])
        for x, y in zip(a, b):
            assert_same_state(x.state, y.state)
            assert x.item_indices[:3] == y.item_indices[:3]
    cache, seen = eager.prefill(histories[0]), np.unique(np.asarray(histories[0], np.uint32))
    ((_, sa),) = eager.advance([Advance([1, 2, 3], cache, seen)])  # several new items on a
    ((_, sb),) = compiled.advance([Advance([1, 2, 3], cache, seen)])  # cache: eager inside
    assert_same_state(sa, sb)


def test_missing_stale_or_broken_packages_are_refused_with_a_reason(packages, tmp_path):
    model, root = packages
    with pytest.raises(CompiledUnavailable, match="no compiled graphs"):
        load_graphs(model, "another-version", root)
    copy = tmp_path / package_key("tiny-plr")
    shutil.copytree(root / package_key("tiny-plr"), copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**manifest, "format": -1}))
    with pytest.raises(CompiledUnavailable, match="another model or format"):
        load_graphs(model, "tiny-plr", tmp_path)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    (copy / "append1.pt2").write_bytes(b"not a package")
    with pytest.raises(CompiledUnavailable, match="append1|pt2|zip"):
        load_graphs(model, "tiny-plr", tmp_path)


def test_a_package_that_differs_from_eager_is_refused_at_build(packages):
    """The build checks each package against its eager module (the fixture's build passed that
    check); a module with other weights no longer matches the package and is refused."""
    from model.inference.compiled import Append1, _detail_names, _verify, package_key

    model, root = packages
    path = str(root / package_key("tiny-plr") / "append1.pt2")
    top = min(100, model.cfg.n_items)
    _verify("append1", Append1(model, _detail_names(model), top).eval(), path, model.cfg)
    other = make_model("plr", seed=4)
    with pytest.raises(CompiledUnavailable, match="differs from eager"):
        _verify("append1", Append1(other, _detail_names(other), top).eval(), path, other.cfg)
