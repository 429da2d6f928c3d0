"""Fixtures of the inference tests: one tiny engine per model kind (see inference_helpers)."""

import pytest
from inference_helpers import make_model

from model.config import MODEL_KINDS
from model.inference import Engine


@pytest.fixture(params=MODEL_KINDS)
def kind(request):
    return request.param


@pytest.fixture
def engine(kind):
    return Engine(make_model(kind), "test-v1")
