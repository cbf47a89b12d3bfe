"""The per-module REST API, wire-compatible with DEEPaaS v2."""

from __future__ import annotations

from forgehub.modelapi.app import ModelAPI
from forgehub.modelapi.standalone import create_model_app

__all__ = ["ModelAPI", "create_model_app"]
