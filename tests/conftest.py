"""Shared pytest configuration: quiet TensorFlow, deterministic seeds, helpers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(1234)
    tf.random.set_seed(1234)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


def lenstronomy_or_skip():
    """Import lenstronomy (a test-only dependency) or skip the test."""
    return pytest.importorskip("lenstronomy")
