"""Shared fixtures: tiny random models built from config, once per test session."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    from attnseg.testing import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "model")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    from attnseg.testing import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl") / "model")


@pytest.fixture
def random_image():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((40, 52, 3)) * 255).astype(np.uint8))
