"""JSON Schema -> the OpenAPI subset Gemini accepts in ``functionDeclarations[].parameters``.

Gemini's ``Schema`` rejects unknown keys (``additionalProperties``, ``$schema``, ``$ref``...) and has
no references, so the cleaner (after LiteLLM's ``_build_vertex_schema``):

- inlines ``$ref`` into ``$defs`` / ``definitions`` (any ``#/...`` pointer); a reference to a
  definition that is already being expanded (a recursive schema) becomes a plain ``object``;
- turns ``type: ["string", "null"]`` into ``type: "string", nullable: true`` (several non-null types
  become an ``anyOf``), drops ``{"type": "null"}`` from ``anyOf`` the same way (a single survivor is
  merged into its parent), ``oneOf`` becomes ``anyOf``, ``allOf`` is merged, a string ``const``
  becomes a one-value ``enum``;
- keeps only the keys of Gemini's ``Schema`` (LiteLLM 2026 list: ``title`` and ``default`` included),
  drops ``format`` values Gemini does not know for the type, and ``required`` names that are not
  properties; an object with ``properties`` but no ``type`` gets ``type: object``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KEPT_KEYS", "clean_schema"]

KEPT_KEYS = frozenset(
    {
        "type", "format", "title", "description", "nullable", "enum", "items", "properties", "required",
        "minItems", "maxItems", "minProperties", "maxProperties", "minimum", "maximum", "minLength",
        "maxLength", "pattern", "example", "anyOf", "propertyOrdering", "default",
    }
)  # fmt: skip
_FORMATS = {
    "string": frozenset({"enum", "date-time"}),
    "integer": frozenset({"int32", "int64"}),
    "number": frozenset({"float", "double"}),
}
_MAX_DEPTH = 64


def clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A Gemini-acceptable copy of ``schema`` (the input is not modified)."""
    cleaner = _Cleaner(schema)
    return cleaner.clean(schema, depth=0)


class _Cleaner:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.expanding: list[str] = []

    def clean(self, node: Any, depth: int) -> dict[str, Any]:
        if not isinstance(node, dict) or depth > _MAX_DEPTH:
            return {}
        node = self._expand(node, depth)
        if "$ref" in node:  # recursive reference: Gemini cannot express it
            return _keep({"type": "object", "description": node.get("description")})
        node = _normalize(node)
        if "$ref" in node:  # Optional[<ref>] collapsed into its parent: expand that too
            return self.clean(node, depth + 1)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key not in KEPT_KEYS or value is None:
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: self.clean(sub, depth + 1) for name, sub in value.items()}
            elif key == "items":
                out[key] = self.clean(value[0] if isinstance(value, list) and value else value, depth + 1)
            elif key == "anyOf" and isinstance(value, list):
                out[key] = [self.clean(sub, depth + 1) for sub in value]
            else:
                out[key] = value
        return _finish(out)

    def _expand(self, node: dict[str, Any], depth: int) -> dict[str, Any]:
        """Inline ``$ref`` (sibling keys win over the definition's) and merge ``allOf``."""
        while "$ref" in node and depth <= _MAX_DEPTH:
            ref = str(node["$ref"])
            target = self._resolve(ref)
            if target is None or ref in self.expanding:
                return node
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            self.expanding.append(ref)
            try:
                resolved = self.clean(target, depth + 1)
            finally:
                self.expanding.pop()
            node = {**resolved, **siblings}
        if isinstance(node.get("allOf"), list):
            members = [self._expand(s, depth + 1) for s in node["allOf"] if isinstance(s, dict)]
            node = _merge_all_of(node, members)
        return node

    def _resolve(self, ref: str) -> dict[str, Any] | None:
        if not ref.startswith("#"):
            return None
        target: Any = self.root
        for token in (t for t in ref[1:].split("/") if t):
            token = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or token not in target:
                return None
            target = target[token]
        return target if isinstance(target, dict) else None


def _merge_all_of(node: dict[str, Any], members: list[dict[str, Any]]) -> dict[str, Any]:
    out = {k: v for k, v in node.items() if k != "allOf"}
    for member in members:
        for key, value in member.items():
            if key == "properties" and isinstance(value, dict):
                out["properties"] = {**value, **(out.get("properties") or {})}
            elif key == "required" and isinstance(value, list):
                out["required"] = list(dict.fromkeys([*(out.get("required") or []), *value]))
            else:
                out.setdefault(key, value)
    return out


def _normalize(node: dict[str, Any]) -> dict[str, Any]:
    """Type lists, null members of anyOf/enum, oneOf and const, before the key filter."""
    node = dict(node)
    if "oneOf" in node and "anyOf" not in node:
        node["anyOf"] = node.pop("oneOf")
    if isinstance(node.get("const"), str) and "enum" not in node:
        node["enum"] = [node["const"]]
        node.setdefault("type", "string")
    if isinstance(node.get("type"), list):
        node = _type_list(node)
    if isinstance(node.get("enum"), list) and None in node["enum"]:
        node["enum"] = [v for v in node["enum"] if v is not None]
        node["nullable"] = True
    if isinstance(node.get("anyOf"), list):
        node = _any_of(node)
    return node


def _type_list(node: dict[str, Any]) -> dict[str, Any]:
    types = [t for t in node["type"] if t != "null"]
    if len(types) < len(node["type"]):
        node["nullable"] = True
    if len(types) == 1:
        node["type"] = types[0]
    elif not types:
        node["type"] = "null"
    else:
        del node["type"]
        node["anyOf"] = [{"type": t} for t in types]
    return node


def _any_of(node: dict[str, Any]) -> dict[str, Any]:
    members = [m for m in node["anyOf"] if isinstance(m, dict)]
    rest = [m for m in members if m.get("type") != "null" or len(m) > 1]
    if len(rest) == len(members):
        return node
    if not rest:
        del node["anyOf"]
        node["nullable"] = True
        return node
    if len(rest) == 1:  # Optional[X]: X itself, nullable (the parent's description etc. win)
        merged = {**rest[0], **{k: v for k, v in node.items() if k != "anyOf"}, "nullable": True}
        return _normalize(merged)
    node["anyOf"] = [{**m, "nullable": True} for m in rest]
    return node


def _finish(out: dict[str, Any]) -> dict[str, Any]:
    if "properties" in out and "type" not in out and "anyOf" not in out:
        out["type"] = "object"
    known = _FORMATS.get(out["type"], frozenset()) if isinstance(out.get("type"), str) else frozenset()
    if "format" in out and out["format"] not in known:
        del out["format"]
    if isinstance(out.get("required"), list):
        props = out.get("properties") or {}
        required = [name for name in out["required"] if name in props]
        if required:
            out["required"] = required
        else:
            del out["required"]
    return out


def _keep(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if v is not None}
