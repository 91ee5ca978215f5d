"""Typed field access on raw rows. A value of the wrong type is an error naming the file, the line and the field;
nothing is coerced (a number is not text, a list of two questions is not one question)."""

from __future__ import annotations

from typing import Any

from sfmed_lf.formats.reading import Location

_MISSING = object()


def value(location: Location, row: dict[str, Any], *names: str) -> tuple[str, Any]:
    """(name, value) of the first of ``names`` present in ``row`` with a non-null value."""
    for name in names:
        found = row.get(name, _MISSING)
        if found is not _MISSING and found is not None:
            return name, found
    raise location.error(f"missing field {' or '.join(repr(n) for n in names)}.")


def _as_text(location: Location, name: str, found: Any) -> str:
    if isinstance(found, list) and len(found) == 1:  # Zhongjing's Huatuo-26M copy wraps each text in a list
        found = found[0]
    if isinstance(found, list):
        raise location.error(f"must be one text, got a list of {len(found)} items.", name)
    if not isinstance(found, str):
        raise location.error(f"must be text, got {type(found).__name__} {found!r:.40}.", name)
    return found


def text(location: Location, row: dict[str, Any], *names: str) -> str:
    """Non-empty stripped text of the first of ``names`` present (a one-element list gives its element)."""
    name, found = value(location, row, *names)
    result = _as_text(location, name, found).strip()
    if not result:
        raise location.error("is empty.", name)
    return result


def optional_text(location: Location, row: dict[str, Any], name: str) -> str:
    """Stripped text of ``name``, or "" when it is absent or null; any other type is an error."""
    found = row.get(name)
    if found is None:
        return ""
    return _as_text(location, name, found).strip()


def text_list(location: Location, row: dict[str, Any], name: str) -> list[str]:
    """A non-empty list of non-empty texts (stripped)."""
    _, found = value(location, row, name)
    if not isinstance(found, list) or not found:
        raise location.error("must be a non-empty list of texts.", name)
    texts = []
    for index, item in enumerate(found):
        if not isinstance(item, str) or not item.strip():
            raise location.error(f"item {index} must be non-empty text, got {item!r:.40}.", name)
        texts.append(item.strip())
    return texts


def metadata(row: dict[str, Any], consumed: set[str]) -> dict[str, str]:
    """Every field of ``row`` not in ``consumed`` as text (JSON for non-text values), so no source field is lost.
    Empty and null values are left out."""
    import json

    kept = {}
    for name, found in row.items():
        if name in consumed or found is None or found == "" or found == [] or found == {}:
            continue
        kept[name] = found if isinstance(found, str) else json.dumps(found, ensure_ascii=False)
    return kept
