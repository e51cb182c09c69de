"""How argparse reads the command line's words: the flags' values (comma-separated numbers or
names, a whole number or 'auto'), a switch that gives way to a value, `--bounds` with a
negative first value, and an error as one line. `flags` lists the flags with these."""

from __future__ import annotations

import argparse

from sparkinfer.errors import ConfigError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise ConfigError(f"command line: {message} (see --help)")


class UnlessGiven(argparse.Action):
    """A switch that sets its `const` unless a value was given already: `--confidence` after
    `--confidence-measure margin` keeps margin. With `const=True`, the layers under the
    command line choose the value (`config_sources.load_config`)."""

    def __init__(self, option_strings, dest, const, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, const=const, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if getattr(namespace, self.dest, None) is None:
            setattr(namespace, self.dest, self.const)


def floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        message = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        message = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


def int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        message = f"expected a whole number or 'auto', got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def joined_bounds(argv: list[str]) -> list[str]:
    """`--bounds -3901440,...` as `--bounds=-3901440,...`: argparse takes a value that starts
    with a dash for another flag, and bounds west of 0 or south of the equator do."""
    joined, rest = [], iter(argv)
    for word in rest:
        if word == "--bounds":
            value = next(rest, None)
            joined.append(word if value is None else f"--bounds={value}")
        else:
            joined.append(word)
    return joined
