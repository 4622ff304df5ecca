"""config/example.yaml documents every key and is itself a valid config."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from pydantic import BaseModel

from config import models
from config.loader import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"
ENV = {name: "placeholder-value" for name in (
    "HUBSPOT_TOKEN", "SF_CLIENT_ID", "SF_CLIENT_SECRET", "TABLEAU_TOKEN_NAME", "TABLEAU_TOKEN_SECRET",
    "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")} | {"SLACK_WEBHOOK_URL": "json://127.0.0.1:9/hook"}

MODELS = [cls for _, cls in inspect.getmembers(models, inspect.isclass)
          if issubclass(cls, BaseModel) and cls.__module__.startswith("config.models") and not cls.__name__.startswith("_")
          and cls is not models.StrictModel]


def test_example_is_valid():
    loaded = load_config(EXAMPLE, env=ENV)
    types = {s.type for s in loaded.config.sources}
    assert types == {"csv", "excel", "hubspot", "salesforce", "tableau"}
    assert {d.type for d in loaded.config.destinations} == {"file", "onedrive"}
    assert loaded.config.notify[0].on == ["failure", "flags_changed"]  # `on:` is a key, not YAML 1.1's true
    assert "placeholder-value" in loaded.secrets


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_key_is_documented(model):
    text = EXAMPLE.read_text()
    missing = [f for f in model.model_fields if f"{f}:" not in text]
    assert not missing, f"{model.__name__}: keys not documented in config/example.yaml: {missing}"
