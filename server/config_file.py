"""`serve --config FILE` and `serve --print-config`: a ServerConfig as strict JSON, and flags over it.

The file holds every ServerConfig field except the bearer token (secrets come from
ENERGY_RERANK_TOKEN or --token-file, never from a file that is printed and versioned): paths
as strings, an infinite switch margin as "inf". `serve --print-config` writes exactly the form
`--config` reads, so a deployment can start from the flags it runs with today. The file's values
replace the flags' defaults; a flag given on the command line overrides the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from energy_rerank.config import config_from_dict, config_to_dict
from energy_rerank.server.config import ServerConfig

SECRET_FIELDS = ("auth_token",)  # never written, refused when read


def config_to_json(config: ServerConfig) -> str:
    """The file form: strict JSON, paths as strings, inf as "inf", no token."""
    data = config_to_dict(config)
    for name in SECRET_FIELDS:
        data.pop(name)

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, float) and math.isinf(value):
            return "inf"
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return json.dumps(plain(data), indent=2, allow_nan=False)


def config_from_json(text: str, where: str = "--config") -> ServerConfig:
    """The file form -> ServerConfig; unknown keys, a token or bad values are errors naming them."""
    try:
        data = json.loads(text, parse_constant=lambda c: _refuse(where, c))
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    for name in SECRET_FIELDS:
        if name in data:
            raise ValueError(f"{where}: {name} does not belong in a config file; set ENERGY_RERANK_TOKEN or --token-file")
    hints = typing.get_type_hints(ServerConfig)
    for name, value in list(data.items()):
        if name in hints and _is_path(hints[name]) and isinstance(value, str):
            data[name] = Path(value)
    if data.get("switch_margin") == "inf":
        data["switch_margin"] = math.inf
    try:
        return config_from_dict(ServerConfig, data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def explicit_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The dests of the options actually given in argv (not those left at their defaults)."""
    saved = [(a, a.default) for a in parser._actions]
    for action, _ in saved:
        action.default = argparse.SUPPRESS
    try:
        given, _ = parser.parse_known_args(list(argv))
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(given))


def merged(file_config: ServerConfig, flags: ServerConfig, given: set[str], fields: dict[str, str | None]) -> ServerConfig:
    """file_config with the fields of the given flags taken from `flags`. fields maps a flag's dest
    to its ServerConfig field ("batch.max_batch" for nested ones; None: not a config field); a
    dest missing from it names its field itself. The token always comes from the flags/env."""
    out = dataclasses.replace(file_config, auth_token=flags.auth_token)
    for dest in sorted(given):
        path = fields.get(dest, dest)
        if path is None:
            continue
        head, _, sub = path.partition(".")
        if sub:
            inner = dataclasses.replace(getattr(out, head), **{sub: getattr(getattr(flags, head), sub)})
            out = dataclasses.replace(out, **{head: inner})
        else:
            out = dataclasses.replace(out, **{head: getattr(flags, head)})
    return out


def _is_path(tp: Any) -> bool:
    return tp is Path or Path in typing.get_args(tp)


def _refuse(where: str, constant: str) -> Any:
    raise ValueError(f"{where}: {constant} is not strict JSON (write an infinite margin as \"inf\")")
