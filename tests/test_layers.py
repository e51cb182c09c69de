"""The package reads as the data flow: every module sits on a floor, and imports only from its
own floor or the floors below. The executor's parts import no pyspark; Spark stays at the
edges (`session` and the `stages`)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sparkinfer"

# Lowest first. A new module takes its floor here, which is what makes this test fail for it.
FLOORS = [
    # What everything stands on: values, files, rasters, plans, models and their outputs.
    {
        "sparkinfer",
        "errors",
        "config",
        "config_sources",
        "config_groups",
        "storage",
        "s3",
        "cuts",
        "plan",
        "receptive_field",
        "devices",
        "raster",
        "stac",
        "averaging",
        "estimate",
        "whole_tiff",
        "confidence",
        "uncertain",
        "writers",
        "cogs",
        "catalog",
        "chips",
        "polygons",
        "polygon_merge",
        "quicklook",
        "blend",
        "verify",
        "progress",
        "lock",
        "outputs",
        "model",
        "inspection",
        "model_item",
        "provenance",
        "tiling",
        "runtimes",
        "grid",
        "mosaic",
        "raster_job",
        "map_index",
        "zarr_map",
    },
    {"executor"},  # what a task does with its chunks, without Spark
    # The run checked and planned; a raster assembled; the estimate's tasks and its document.
    {"prepare", "grid_rasters", "assembly", "sampling", "estimate_report"},
    {"session"},  # Spark's edge: sessions, shipments, stages run
    {"stages"},  # the Spark stages
    {"report", "job"},  # a run, in the order of the data flow, and its report
    # The command line (its flags, and how they read their values) and the notebook's form.
    {"flags", "flag_parsing", "widgets", "cli", "__main__"},
]


def _floor(module: str) -> int | None:
    name = module.removeprefix("sparkinfer.").split(".")[0]
    return next((i for i, floor in enumerate(FLOORS) if name in floor), None)


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.with_suffix("").relative_to(PACKAGE.parent).parts
        yield ".".join(p for p in parts if p != "__init__"), ast.parse(path.read_text())


def _imports(tree: ast.AST) -> set[str]:
    """Every module `tree` imports, anywhere in it (lazy imports in functions too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_every_module_has_a_floor():
    assert [module for module, _ in _modules() if _floor(module) is None] == []


def test_no_import_runs_up_a_floor():
    upward = [
        f"{module} ({_floor(module)}) imports {name} ({_floor(name)})"
        for module, tree in _modules()
        for name in _imports(tree)
        if name.startswith("sparkinfer") and _floor(name) > _floor(module)
    ]
    assert upward == []


def test_the_executor_imports_no_pyspark():
    found = [
        f"{module} imports {name}"
        for module, tree in _modules()
        if module.startswith("sparkinfer.executor")
        for name in _imports(tree)
        if name.split(".")[0] in ("pyspark", "py4j")
    ]
    assert [m for m, _ in _modules() if m.startswith("sparkinfer.executor")], "no executor"
    assert found == []


def test_modules_stay_small():
    """A module is one concept a newcomer can name: 350 lines at most, formatted."""
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > 350
    }
    assert long == {}
