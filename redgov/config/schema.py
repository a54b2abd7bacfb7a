"""The JSON Schema of a configuration document, generated from the Structs (so loader and schema agree)."""

from __future__ import annotations

from typing import Any

import msgspec

from .model import ConfigDocument

__all__ = ["config_schema"]


def config_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a configuration document (``redgov schema`` prints it)."""
    schema: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                              "title": "redgov configuration"}
    schema.update(msgspec.json.schema(ConfigDocument))
    return schema
