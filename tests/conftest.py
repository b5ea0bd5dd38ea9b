"""Shared fixtures: where the real data lives, and a tiny ResNet for fast tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    return Path(os.environ.get("EDGERESNET_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (../shared/data); skipped when absent, a failure under CI=true."""
    root = _shared_data_dir()
    if not (root / "cifar10" / "test").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the shared data folder {root} is missing; set EDGERESNET_TEST_DATA")
        pytest.skip(f"real data not found at {root}; set EDGERESNET_TEST_DATA to ../shared/data")
    return root


@pytest.fixture(scope="session")
def resnet8_h5(shared_data) -> Path:
    return shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet.h5"
