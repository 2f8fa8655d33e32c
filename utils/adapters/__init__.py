"""Adapters: any model source → a built model (``gist_loader``) → one uniform interface
(``model_adapter``)."""

from utils.adapters.gist_loader import LoadedModel, example_path, load_model
from utils.adapters.model_adapter import ModelAdapter, adapt
from utils.adapters.sources import gist_id_from_url, parse_source

__all__ = ["LoadedModel", "ModelAdapter", "adapt", "example_path", "gist_id_from_url",
           "load_model", "parse_source"]
