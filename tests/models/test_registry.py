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


def test_a_model_needing_a_missing_package_gives_a_clear_error(monkeypatch):
    real_import = importlib.import_module

    def without_gymnasium(name, *args):
        if name == "deepfuse.models.driving_rl":
            raise ModuleNotFoundError("No module named 'gymnasium'", name="gymnasium")
        return real_import(name, *args)

    monkeypatch.setattr(models, "_tasks", {})
    monkeypatch.setattr(models, "_missing", {})
    monkeypatch.setattr(importlib, "import_module", without_gymnasium)
    assert "driving-rl" not in models.names() and "digits" in models.names()
    assert models.unavailable() == {"driving_rl": "gymnasium"}
    with pytest.raises(ValueError, match="model 'driving-rl' needs the package 'gymnasium'"):
        models.get("driving-rl")


def test_a_broken_model_file_is_not_hidden(monkeypatch):
    real_import = importlib.import_module

    def broken(name, *args):
        if name == "deepfuse.models.stock":
            raise ModuleNotFoundError("No module named 'deepfuse.data.stocks'", name="deepfuse.data.stocks")
        return real_import(name, *args)

    monkeypatch.setattr(models, "_tasks", {})
    monkeypatch.setattr(models, "_missing", {})
    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="deepfuse.data.stocks"):
        models.names()
