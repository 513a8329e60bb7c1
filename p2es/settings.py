"""Service settings from a YAML/JSON file plus command-line flags, validated by pydantic.

``p2es run`` and ``p2es alerts run`` share this: the file gives the base mapping, flags that were
given override it, and the first validation problem becomes one :class:`P2esError` line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from p2es.errors import P2esError

M = TypeVar("M", bound=BaseModel)


def read_settings_file(path: str | Path | None) -> dict[str, Any]:
    """The mapping in a ``.json`` or YAML file ({} for None); any problem -> P2esError."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise P2esError(f"config file not found: {p}")
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix.lower() == ".json" else _yaml(text)
    except Exception as e:  # noqa: BLE001 - one line, whatever the parser raised
        raise P2esError(f"cannot parse config {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise P2esError(f"config {p} must hold a mapping of settings")
    return data


def _yaml(text: str) -> Any:
    import yaml

    return yaml.safe_load(text) or {}


def merge_flags(data: dict[str, Any], args: argparse.Namespace, flags: Mapping[str, str]) -> dict[str, Any]:
    """Set ``data[field]`` from every flag (``args.<flag>``) that was given (not None)."""
    for flag, fld in flags.items():
        v = getattr(args, flag, None)
        if v is not None:
            data[fld] = v
    return data


def validate(model: type[M], data: Mapping[str, Any], what: str) -> M:
    """``model(**data)``; the first validation error -> ``bad WHAT setting LOC: MSG``."""
    try:
        return model(**data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        raise P2esError(f"bad {what} setting {loc + ': ' if loc else ''}{msg}") from None
