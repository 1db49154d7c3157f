"""The model registry: every model file registers; a model whose optional package is missing is reported, not fatal."""

import importlib

import pytest

from deepfuse import models


def test_every_model_is_registered():
    assert models.names() == [
        "catsdogs",
        "chest_xray",
        "digits",
        "driving",
        "driving-rl",
        "sentiment-lstm",
        "sentiment-transformer",
        "stock",
    ]
    for name in models.names():
        task = models.get(name)
        assert task.name == name and task.description and task.metric


def _failing_import(monkeypatch, module: str, missing: str) -> None:
    """The registry forgets what it loaded, and importing ``module`` fails as if the package ``missing`` were
    not installed."""
    real_import = importlib.import_module

    def import_module(name, *args):
        if name == module:
            raise ModuleNotFoundError(f"No module named '{missing}'", name=missing)
        return real_import(name, *args)

    monkeypatch.setattr(models, "_tasks", {})
    monkeypatch.setattr(models, "_missing", {})
    monkeypatch.setattr(importlib, "import_module", import_module)


def test_a_model_needing_a_missing_package_gives_a_clear_error(monkeypatch):
    _failing_import(monkeypatch, "deepfuse.models.driving_rl", "gymnasium")
    assert "driving-rl" not in models.names() and "digits" in models.names()
    assert models.unavailable() == {"driving_rl": "gymnasium"}
    with pytest.raises(ValueError, match="model 'driving-rl' needs the package 'gymnasium'"):
        models.get("driving-rl")


def test_a_broken_model_file_is_not_hidden(monkeypatch):
    _failing_import(monkeypatch, "deepfuse.models.stock", "deepfuse.data.stocks")
    with pytest.raises(ModuleNotFoundError, match="deepfuse.data.stocks"):
        models.names()
