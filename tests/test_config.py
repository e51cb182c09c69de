"""Configuration: defaults, merge order and one-line errors."""

from pathlib import Path

import numpy as np
import pytest

from sparkinfer.config import JobConfig
from sparkinfer.config_sources import load_config, read_yaml
from sparkinfer.errors import ConfigError
from sparkinfer.flags import config_from_args

DEFAULTS = Path(__file__).resolve().parent.parent / "conf" / "default.yaml"
REQUIRED = {"input": ["a.tif"], "model": "m.keras", "output": "out"}


def test_conf_default_yaml_states_the_built_in_defaults():
    from_file = load_config(REQUIRED, defaults_file=DEFAULTS)
    assert from_file == JobConfig(**REQUIRED)
    assert set(read_yaml(DEFAULTS)) <= set(JobConfig.model_fields)


def test_flags_override_the_config_file_which_overrides_defaults(tmp_path):
    config_file = tmp_path / "job.yaml"
    config_file.write_text("tile_size: 256\nbatch_size: 4\ncog:\n  compression: zstd\n")
    config = config_from_args(
        [
            "--input",
            "x.tif",
            "y/*.tif",
            "--model",
            "m.keras",
            "--output",
            "o",
            "--config",
            str(config_file),
            "--tile-size",
            "128",
            "--bands",
            "3,2,1",
            "--mean",
            "1,2,3",
            "--std",
            "2,2,2",
            "--halo",
            "16",
        ],
        defaults_file=DEFAULTS,
    )
    assert config.tile_size == 128 and config.batch_size == 4 and config.halo == 16
    assert config.cog.compression == "zstd" and config.cog.blocksize == 512
    assert config.input == ["x.tif", "y/*.tif"] and config.bands == [3, 2, 1]
    assert config.normalization.mean == [1, 2, 3]
    assert config.chunk_tiles == "auto"


@pytest.mark.parametrize("option", ["chunk_tiles", "batch_size", "readers"])
@pytest.mark.parametrize("flag, expected", [("auto", "auto"), ("3", 3)])
def test_counts_are_a_number_or_auto(option, flag, expected):
    argv = [
        "--input",
        "x.tif",
        "--model",
        "m.keras",
        "--output",
        "o",
        f"--{option.replace('_', '-')}",
        flag,
    ]
    assert getattr(config_from_args(argv, defaults_file=DEFAULTS), option) == expected


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("tile_sise: 256\n", "unknown option 'tile_sise'"),
        ("tile_size: big\n", "tile_size: Input should be a valid integer"),
        ("tile_size: -5\n", "tile_size: Input should be greater than 0"),
        ("tile_size: 64\nhalo: 100\n", "halo 100 is larger than tile_size 64"),
        ("bands: [0, 1]\n", "bands are 1-based"),
        ("normalization: {scale: 2, mean: [1]}\n", "mean and std must be given together"),
        ("cog: {blocksize: 300}\n", "power of two"),
        ("chunk_tiles: 0\n", "chunk_tiles: Input should be greater than 0 or 'auto'"),
        ("- a\n- b\n", "expected a mapping"),
        ("tile_size: [\n", "not valid YAML"),
    ],
)
def test_bad_config_file_is_one_line_naming_the_file(tmp_path, yaml_text, message):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml_text)
    with pytest.raises(ConfigError) as caught:
        load_config(REQUIRED, config_file=config_file, defaults_file=DEFAULTS)
    text = str(caught.value)
    assert message in text and "\n" not in text
    assert text.startswith(str(config_file)) or "expected a mapping" in text


def test_bad_flag_is_reported_against_the_command_line():
    with pytest.raises(ConfigError, match="^command line: argument --tile-size"):
        config_from_args(["--tile-size", "x"])
    with pytest.raises(ConfigError, match="--chunk-tiles: expected a whole number or 'auto'"):
        config_from_args(["--chunk-tiles", "some"])
    with pytest.raises(ConfigError, match="^command line: missing required option 'model'"):
        config_from_args(["--input", "a.tif", "--output", "o"], defaults_file=DEFAULTS)


def test_scale_and_offset_come_before_mean_and_std():
    """Digital numbers to reflectance, then the model's statistics in reflectance units."""
    from sparkinfer.runtimes import preprocess

    argv = [
        "--input",
        "x.tif",
        "--model",
        "m.keras",
        "--output",
        "o",
        "--scale",
        "0.004",
        "--offset",
        "-0.1",
        "--mean",
        "0.1,0.2",
        "--std",
        "0.5,0.25",
    ]
    norm = config_from_args(argv, defaults_file=DEFAULTS).normalization
    pixels = np.array([[[250, 100]]], np.uint16)
    expected = (np.float32([0.9, 0.3]) - np.float32([0.1, 0.2])) / np.float32([0.5, 0.25])
    np.testing.assert_allclose(preprocess(pixels, None, norm)[0, 0], expected, rtol=1e-6)


def test_every_flag_sets_the_config_field_it_is_named_for():
    """The command line's flags map onto `JobConfig`'s fields by their destinations alone: each
    names a field (`section.field` inside normalization, cog or grid), and every field has a
    flag; --config and --rerun name where options come from."""
    from sparkinfer.config import CogOptions, GridOptions, Normalization
    from sparkinfer.flags import build_parser

    destinations = {
        action.dest
        for action in build_parser()._actions
        if action.dest not in ("help", "config", "rerun")
    }
    fields = {
        *(n for n in JobConfig.model_fields if n not in ("normalization", "cog", "grid")),
        *(f"normalization.{name}" for name in Normalization.model_fields),
        *(f"cog.{name}" for name in CogOptions.model_fields),
        *(f"grid.{name}" for name in GridOptions.model_fields),
    }
    assert destinations == fields
    assert all(value is None for value in vars(build_parser().parse_args([])).values())


def test_flags_in_sections_and_renamed_ones_reach_their_fields():
    config = config_from_args(
        [
            *("--input", "a.tif", "--model", "m.keras", "--output", "out"),
            *("--scale", "0.5", "--mean", "1,2", "--std", "3,4"),
            *("--cog-compression", "zstd", "--progress", "0", "--softmax"),
        ]
    )
    assert config.normalization.model_dump() == {
        "scale": 0.5,
        "offset": None,
        "mean": [1.0, 2.0],
        "std": [3.0, 4.0],
    }
    assert (config.cog.compression, config.cog.blocksize) == ("zstd", 512)
    assert (config.progress_seconds, config.activation) == (0.0, "softmax")


def test_grid_flags_take_bounds_west_and_south_and_need_the_grid():
    common = ["--input", "a.tif", "--model", "m.keras", "--output", "out"]
    config = config_from_args(
        [*common, "--grid", "EPSG:3857", "--resolution", "30", "--bounds", "-3901440,-890000,0,1"]
    )
    assert config.grid.bounds == [-3901440.0, -890000.0, 0.0, 1.0]
    with pytest.raises(ConfigError) as caught:
        config_from_args([*common, "--resolution", "30"])
    assert str(caught.value) == (
        "command line: a map needs --grid CRS and --resolution R "
        "(grid: {crs: ..., resolution: ...})"
    )
