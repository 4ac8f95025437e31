"""Cross-field rules in the OpenAPI document: a request schema that has rules between
its fields declares them as JSON Schema keywords beside its properties (`OPENAPI_RULES`,
e.g. an `anyOf`), so the document accepts exactly what the server accepts."""

from __future__ import annotations

from typing import Any

from apispec import BasePlugin
from apispec.ext.marshmallow.common import resolve_schema_cls


class SchemaRules(BasePlugin):
    """Adds a marshmallow schema's `OPENAPI_RULES` to its component."""

    def schema_helper(
        self, name: str, definition: dict[str, Any], schema: Any = None, **kwargs: Any
    ) -> dict[str, Any] | None:
        if schema is None:
            return None
        rules = getattr(resolve_schema_cls(schema), "OPENAPI_RULES", None)
        return dict(rules) if rules else None
