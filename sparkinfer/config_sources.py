"""Where a job's config comes from: the job's defaults file, a model item's (`--model-item`,
`sparkinfer.model_item`), the YAML file of `--config` and the command line's flags, merged in
that order (later ones win) into a validated `JobConfig`; a problem is one line that names its
source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sparkinfer.config import JobConfig
from sparkinfer.errors import ConfigError
from sparkinfer.model_item import read_model_item


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(data).__name__}")
    return data


def _option_key(loc: tuple) -> str:
    """`a.b` of a pydantic error location, without the union members it names."""
    members = {"int", "float", "str", "bool"}
    parts = [str(p) for p in loc if not (p in members or "-" in str(p) or "[" in str(p))]
    return ".".join(parts)


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem of a pydantic error, as `key: problem (got value)`."""
    errors = exc.errors()
    err = errors[0]
    key = _option_key(err["loc"]) or "config"
    if err["type"] == "extra_forbidden":
        return f"unknown option '{key}'"
    if err["type"] == "missing":
        if err["loc"][0] == "grid":  # a grid option given without the grid itself
            return "a map needs --grid CRS and --resolution R (grid: {crs: ..., resolution: ...})"
        return f"missing required option '{key}'"
    message = err["msg"].removeprefix("Value error, ")
    # A value that fits no member of a union (a number or 'auto'): name the other choices too.
    for other in errors[1:]:
        if _option_key(other["loc"]) == key and other["type"] == "literal_error":
            message += f" or {other['ctx']['expected']}"
    if err["type"].startswith("value_error") or not err["loc"]:
        return f"{key}: {message}" if err["loc"] else message
    return f"{key}: {message} (got {err.get('input')!r})"


def _merged(layers: list[tuple[str, dict]]) -> tuple[dict[str, Any], dict[str, str]]:
    """The layers merged, later ones winning, and which layer each top-level option is from."""
    merged: dict[str, Any] = {}
    source_of: dict[str, str] = {}
    for source, layer in layers:
        merged = _deep_merge(merged, layer)
        source_of.update(dict.fromkeys(layer, source))
    return merged, source_of


def load_config(
    overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    defaults_file: str | Path | None = None,
    rerun: str | None = None,
) -> JobConfig:
    """Merge defaults, an output's STAC Item to `rerun` (`provenance.rerun_layer`), a model
    item, an optional YAML file and flag overrides into a validated `JobConfig`.

    A validation error names where the offending option came from (a file or the flags).
    """
    layers = [(str(defaults_file), read_yaml(defaults_file))] if defaults_file else []
    if rerun is not None:
        from sparkinfer.provenance import rerun_layer  # loads what describes models: only here

        layers.append((rerun, rerun_layer(rerun)))
    if config_file is not None:
        layers.append((str(config_file), read_yaml(config_file)))
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    layers.append(("command line", flags))
    merged, source_of = _merged(layers)
    item = merged.get("model_item")
    if isinstance(item, str):  # what the model item says, under the --config file and flags
        if "model" in merged:
            raise ConfigError(
                f"{source_of['model']}: a model and a model item ({item}) both given; give one"
            )
        under = len(layers) - 1 - (config_file is not None)  # under the file and the flags
        layers.insert(under, (item, read_model_item(item).config_layer()))
        merged, source_of = _merged(layers)
    if merged.get("confidence") is True:  # the bare switch: a measure set under it, or maxprob
        merged["confidence"] = _merged(layers[:-1])[0].get("confidence") or "maxprob"
    if isinstance(merged.get("input"), str):
        merged["input"] = [merged["input"]]
    try:
        return JobConfig.model_validate(merged)
    except ValidationError as exc:
        loc = exc.errors()[0]["loc"]
        message = describe_validation_error(exc)
        # A check across options has no location: blame the first option its message names.
        key = str(loc[0]) if loc else next((w for w in message.split() if w in source_of), "")
        given = " / ".join(name for name, _ in layers if name != str(defaults_file))
        source = source_of.get(key, given)
        raise ConfigError(f"{source}: {message}") from None
