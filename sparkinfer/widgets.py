"""The Databricks notebook's form: a widget per flag of the command line, and the command line
that the widgets' values stand for (`jobs/databricks_infer_tiles.py`)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from sparkinfer.flags import build_parser


@dataclass(frozen=True)
class Widget:
    """A notebook widget for one command-line option: its name (the flag without dashes), its
    choices (a dropdown; "" leaves the option out) or none (a text box)."""

    name: str
    flag: str
    choices: tuple[str, ...] | None
    many: bool  # takes several values: the text is split like a shell's


def widgets() -> list[Widget]:
    """One widget per option of the command line, in its order (not --config, --verbose)."""
    found = []
    for action in build_parser()._actions:
        flag = max(action.option_strings, key=len, default="")
        if flag in ("", "--help", "--config", "--verbose"):
            continue
        if action.nargs == 0:  # a switch: --scores, or one of --softmax/--sigmoid
            choices = ("", "true")
        else:
            choices = tuple(["", *action.choices]) if action.choices else None
        found.append(Widget(flag.removeprefix("--"), flag, choices, action.nargs == "+"))
    return found


PATH_WIDGETS = ("input", "model", "output")


def fuse_path(path: str) -> str:
    """A Databricks `dbfs:` URI as the path that GDAL and Python read on the cluster: a Unity
    Catalog volume's `dbfs:/Volumes/...` is `/Volumes/...`, the rest of DBFS is under `/dbfs`."""
    if path.startswith("dbfs:/Volumes/"):
        return path.removeprefix("dbfs:")
    if path.startswith("dbfs:/"):
        return "/dbfs/" + path.removeprefix("dbfs:/")
    return path


def argv_of_widgets(values: dict[str, str]) -> list[str]:
    """The command line that notebook widget `values` (by `Widget.name`) stand for; empty
    values leave their option out, and paths may be `dbfs:` URIs (`fuse_path`)."""
    argv = []
    for widget in widgets():
        value = values.get(widget.name, "").strip()
        if not value:
            continue
        if widget.choices == ("", "true"):
            argv.append(widget.flag)
            continue
        words = shlex.split(value) if widget.many else [value]
        if widget.name in PATH_WIDGETS:
            words = [fuse_path(word) for word in words]
        argv += [widget.flag, *words]
    return argv
