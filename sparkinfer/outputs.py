"""What a run writes and where: the output folder (checked before anything is written), the
file names its rasters' outputs take, the folders beside them that a run uses, and the value
that marks nodata in a class map."""

from __future__ import annotations

import glob
import hashlib
import re
import unicodedata
from collections import Counter
from pathlib import Path

from sparkinfer import storage
from sparkinfer.errors import OutputError, first_line

STAGING_FOLDER = "_staging"  # chunks in the making, a folder per raster and identity
# The class map's value where the input is nodata (and so the outputs' nodata), and the scores'.
CLASS_NODATA = 255
SCORE_NODATA = float("nan")


def _input_roots(patterns: list[str]) -> list[tuple[str, str]]:
    """(pattern, folder) for each input that names a folder or a glob pattern: the folder it
    lists, or the pattern's fixed part (up to its first wildcard)."""
    roots = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            if storage.is_s3(pattern):  # only the file name may hold wildcards
                roots.append((pattern, storage.parent(pattern)))
                continue
            parts = Path(pattern).absolute().parts
            fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
            roots.append((pattern, str(Path(*parts[:fixed]).resolve())))
        elif storage.is_dir(pattern):
            roots.append(
                (
                    pattern,
                    storage.absolute(pattern)
                    if storage.is_s3(pattern)
                    else str(Path(pattern).resolve()),
                )
            )
    return roots


def check_output_folder(output: str, patterns: list[str], inputs: list[str]) -> None:
    """The output is neither an input's own folder nor inside a folder or pattern given as
    input, so no later run takes outputs for inputs; next to an input file is fine."""
    resolved = None if storage.is_s3(output) else Path(output).resolve()
    target = output if resolved is None else str(resolved)
    for pattern, root in _input_roots(patterns):
        if target == root or target.startswith(root.rstrip("/") + "/"):
            raise OutputError(
                f"{output}: output folder is inside input {pattern}, where a later run would "
                "take the outputs for inputs; choose a folder outside it"
            )
    for path in inputs:
        if target == storage.parent(path):
            raise OutputError(
                f"{output}: output folder is the folder of input {path}; choose a separate folder"
            )
    if resolved is None:
        try:
            storage.probe_write(output)
        except OSError as exc:
            raise OutputError(
                f"{output}: cannot write there ({first_line(exc, 200)}); check the bucket name "
                "and the AWS_* credentials and endpoint"
            ) from None
        return
    existing = next((p for p in [resolved, *resolved.parents] if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise OutputError(f"{output}: cannot create the output folder ({existing} is not a folder)")
    try:
        storage.probe_write(str(existing))
    except OSError as exc:
        where = "output folder" if existing == resolved else f"folder {existing}"
        raise OutputError(
            f"{output}: cannot write in the {where} ({exc.strerror}); choose another --output"
        ) from None


def output_names(stems: list[str], paths: list[str]) -> list[str]:
    """Output file stems: the inputs' `stems` made safe (ASCII letters, digits, '.', '_', '-';
    never starting with '.' or '_', so never a hidden or reserved name), and distinct: stems
    that clash get a suffix from a hash of their input's full `paths`."""
    safe_stems = []
    for stem in stems:
        ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore")
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_stem.decode()).strip("._-")
        safe_stems.append(safe or "raster")
    counts = Counter(stem.casefold() for stem in safe_stems)  # case-insensitive file systems too
    return [
        stem
        if counts[stem.casefold()] == 1
        else f"{stem}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
        for stem, path in zip(safe_stems, paths, strict=True)
    ]
