"""Where the job reads and writes: local paths or `s3://bucket/key` URIs, as plain strings.

Local files are written under a temporary name beside their final one and renamed into place.
On S3 a file is written locally, then uploaded: an object appears only whole, the atomic commit
S3 offers. pyarrow lists, uploads and deletes; GDAL reads through /vsis3/. Both take the endpoint
and credentials from the AWS variables, which `s3.executor_environment` hands to the executors.
"""

from __future__ import annotations

import fcntl
import fnmatch
import glob
import os
import posixpath
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import rasterio
from pyarrow import fs

from sparkinfer import s3

S3_SCHEME = "s3://"
HTTP_SCHEMES = ("http://", "https://")
UNIQUE_DIGITS = 12  # of a staged file's name (`staging_file`)
REMOVE_ATTEMPTS = 6  # of a local folder that a lost task may still write into (`remove_tree`)
HTTP_TIMEOUT_S = 60


def is_s3(location: str) -> bool:
    return location.startswith(S3_SCHEME)


def is_http(location: str) -> bool:
    """A file at an http(s) URL: read only (a STAC asset's href), through GDAL's /vsicurl/."""
    return location.startswith(HTTP_SCHEMES)


def join(folder: str, *names: str) -> str:
    return posixpath.join(folder, *names) if is_s3(folder) else os.path.join(folder, *names)


def name(location: str) -> str:
    """The last component: a file or folder name."""
    return posixpath.basename(location.rstrip("/")) if is_s3(location) else Path(location).name


def parent(location: str) -> str:
    if is_s3(location):
        bucket_and_key = _key(location)
        return S3_SCHEME + posixpath.dirname(bucket_and_key) if "/" in bucket_and_key else location
    return str(Path(location).parent)


def absolute(location: str) -> str:
    return location.rstrip("/") if is_s3(location) else str(Path(location).absolute())


def uri(location: str) -> str:
    """A location as a URI: s3:// as it is, a local path as file://."""
    return location if is_s3(location) else Path(location).absolute().as_uri()


def gdal_path(location: str) -> str:
    """What GDAL opens for a location: /vsis3/bucket/key for S3, /vsicurl/URL for http(s)."""
    if is_s3(location):
        return "/vsis3/" + location[len(S3_SCHEME) :]
    return "/vsicurl/" + location if is_http(location) else location


# For opening the job's own files (chunks, COGs), which have no side-car files: GDAL need not
# list their folder or look for side-cars on each open (thousands of chunks share a folder).
NO_LISTING = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


# GDAL's retries of an HTTP request (/vsis3/, /vsicurl/) that met a 429 or 5xx answer or a reset
# connection (not a refused one): 5, from 1 s and doubling, about as long as pyarrow's S3
# client waits (`s3.S3_ATTEMPTS`).
HTTP_RETRIES = {"GDAL_HTTP_MAX_RETRY": "5", "GDAL_HTTP_RETRY_DELAY": "1"}


def gdal_env(**options) -> rasterio.Env:
    """GDAL settings for reading and writing, with GDAL's S3 endpoint taken from
    AWS_ENDPOINT_URL (GDAL reads only its own AWS_S3_ENDPOINT and AWS_HTTPS), and its HTTP
    retries unless the environment sets them."""
    options = {k: v for k, v in HTTP_RETRIES.items() if k not in os.environ} | options
    endpoint = s3.endpoint_url()
    if endpoint and "AWS_S3_ENDPOINT" not in os.environ:
        url = urlsplit(endpoint)
        options = {
            "AWS_S3_ENDPOINT": url.netloc,
            "AWS_HTTPS": "YES" if url.scheme == "https" else "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
        } | options
    return rasterio.Env(**options)


@contextmanager
def open_own_raster(location: str) -> Iterator[rasterio.DatasetReader]:
    """Open a raster the job wrote (a chunk or a COG) for reading."""
    with gdal_env(**NO_LISTING), rasterio.open(gdal_path(location)) as src:
        yield src


def _s3(location: str) -> fs.S3FileSystem:
    """The client for a location's bucket."""
    return s3.client(_key(location).split("/", 1)[0])


def _key(location: str) -> str:
    """bucket/key, as pyarrow's S3 filesystem names objects."""
    return location[len(S3_SCHEME) :].rstrip("/")


def _info(location: str):
    return _s3(location).get_file_info(_key(location))


def is_file(location: str) -> bool:
    if is_s3(location):
        return _info(location).type == fs.FileType.File
    return os.path.isfile(location)


def is_dir(location: str) -> bool:
    """Whether a folder exists; on S3, whether any object lies under the prefix (or it is a
    bucket)."""
    if is_s3(location):
        return _info(location).type == fs.FileType.Directory
    return os.path.isdir(location)


def size_and_mtime(location: str) -> tuple[int, int]:
    """Size in bytes and modification time in ns of a file; FileNotFoundError when absent."""
    if is_http(location):
        return _http_size_and_mtime(location)
    if is_s3(location):
        info = _info(location)
        if info.type != fs.FileType.File:
            raise FileNotFoundError(location)
        return info.size, info.mtime_ns or 0
    stat = os.stat(location)
    return stat.st_size, stat.st_mtime_ns


def _http_size_and_mtime(url: str) -> tuple[int, int]:
    """Content-Length and Last-Modified (0 where the server gives none) of a HEAD request."""
    try:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            headers = response.headers
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            raise FileNotFoundError(url) from None
        raise OSError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None
    modified = headers.get("Last-Modified")
    mtime_ns = int(parsedate_to_datetime(modified).timestamp() * 1e9) if modified else 0
    return int(headers.get("Content-Length") or 0), mtime_ns


def _s3_entries(folder: str) -> list[fs.FileInfo]:
    """The objects and prefixes directly under an S3 folder, in one listing."""
    selector = fs.FileSelector(_key(folder) + "/", allow_not_found=True)
    return _s3(folder).get_file_info(selector)


def list_names(folder: str) -> set[str]:
    """Names of the files and folders directly in `folder`; empty when it does not exist."""
    if is_s3(folder):
        return {posixpath.basename(i.path) for i in _s3_entries(folder)}
    try:
        return {entry.name for entry in os.scandir(folder)}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def glob_files(pattern: str) -> list[str]:
    """Files matching a glob pattern, sorted; on S3 only the last component may hold wildcards."""
    if is_s3(pattern):
        folder, wildcard = parent(pattern), name(pattern)
        if any(c in folder for c in "*?["):
            raise ValueError("on S3 only the file name may hold wildcards")
        if not is_dir(folder):
            raise FileNotFoundError(f"no bucket or folder {folder}")
        files = [
            posixpath.basename(i.path) for i in _s3_entries(folder) if i.type == fs.FileType.File
        ]
        return sorted(join(folder, n) for n in files if fnmatch.fnmatchcase(n, wildcard))
    return sorted(p for p in glob.glob(pattern) if os.path.isfile(p))


def make_folders(folder: str) -> None:
    """Create a folder and its parents; nothing on S3, where folders are key prefixes."""
    if not is_s3(folder):
        os.makedirs(folder, exist_ok=True)


def remove(location: str) -> None:
    """Delete a file if it is there."""
    if is_s3(location):
        if is_file(location):
            _s3(location).delete_file(_key(location))
    else:
        Path(location).unlink(missing_ok=True)


def remove_tree(folder: str) -> None:
    """Delete a folder and everything under it, if it is there."""
    if is_s3(folder):
        if is_dir(folder):
            _s3(folder).delete_dir(_key(folder))
        return
    # A task still running after its stage (a speculative copy that lost, not yet killed) may
    # add a file while the tree goes, which leaves the folder; it cannot make the folder again
    # (writers make none), so the removal is tried again until the folder is gone.
    for attempt in range(REMOVE_ATTEMPTS):
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.exists(folder):
            return
        time.sleep(0.1 * (attempt + 1))


def read_bytes(location: str) -> bytes:
    if is_s3(location):
        with _s3(location).open_input_stream(_key(location)) as stream:
            return stream.read()
    return Path(location).read_bytes()


def read_text(location: str) -> str:
    return read_bytes(location).decode("utf-8")


def _scratch() -> Path:
    """Local disk for files on their way to S3: in Spark's Python workers, Spark's local dir (the
    scratch disk a cluster sets aside, removed with the application); else TMPDIR."""
    spark_dirs = os.environ.get("SPARK_LOCAL_DIRS")
    return Path(spark_dirs.split(",")[0]) if spark_dirs else Path(tempfile.gettempdir())


def staging_file(final: str) -> Path:
    """A local file to write `final` into before `commit`: a hidden sibling on local disks (the
    rename is atomic within a file system), a local temporary file for S3."""
    unique = uuid.uuid4().hex[:UNIQUE_DIGITS]
    if is_s3(final):
        return _scratch() / f"sparkinfer-{unique}-{name(final)}"
    final_path = Path(final)
    return final_path.with_name(f".{final_path.name}.{unique}.tmp")


def commit(staged: Path, final: str) -> None:
    """Make a file written by `staging_file` appear at `final`, whole or not at all."""
    if is_s3(final):
        filesystem, key = _s3(final), _key(final)
        try:
            with filesystem.open_output_stream(key) as out, staged.open("rb") as src:
                shutil.copyfileobj(src, out, 8 << 20)
        except BaseException:
            # pyarrow's stream cannot abort: leaving the block closed it, which completed the
            # upload with the part written (one PUT of it, with allow_delayed_open). Remove it:
            # the object is whole or absent, and the next run writes it again.
            with suppress(OSError):
                filesystem.delete_file(key)
            raise
        staged.unlink()
    else:
        os.replace(staged, final)


@contextmanager
def staged(final: str) -> Iterator[Path]:
    """A local file to write `final` into: committed whole when the block ends without an
    error, removed in any case."""
    path = staging_file(final)
    try:
        yield path
        commit(path, final)
    finally:
        path.unlink(missing_ok=True)


def write_text(location: str, text: str) -> None:
    """Write a text file atomically."""
    with staged(location) as path:
        path.write_text(text, encoding="utf-8")


def create_new(location: str, text: str) -> bool:
    """Create a file holding `text` if none is there; False if one is.

    Local: exclusive and whole, the text written to a file of its own then linked (a link fails
    where a file is), so no reader finds it empty. S3 (no create-if-absent in pyarrow): written
    after a check and read back; two runs in the same instant could both see their own."""
    if is_s3(location):
        if is_file(location):
            return False
        write_text(location, text)
        return read_text(location) == text
    folder, name = os.path.split(location)
    with tempfile.NamedTemporaryFile("w", dir=folder or ".", prefix=f".{name}.") as written:
        written.write(text)  # JSON, ASCII: any encoding
        written.flush()
        with suppress(FileExistsError):
            os.link(written.name, location)
            return True
    return False


@contextmanager
def exclusive(folder: str) -> Iterator[None]:
    """Hold an exclusive lock on a local folder (flock, released by the kernel if this process
    dies) for the block. On S3, where no such lock exists, nothing is held."""
    if is_s3(folder):
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def probe_write(folder: str) -> None:
    """Write and delete a small file in `folder`: raises OSError if that cannot be done.

    A real write, not os.access, which says yes to root, on read-only mounts and under ACLs."""
    if is_s3(folder):
        probe = join(folder, f".sparkinfer-probe-{uuid.uuid4().hex[:12]}")
        with _s3(probe).open_output_stream(_key(probe)) as out:
            out.write(b"")
        _s3(probe).delete_file(_key(probe))
        return
    with tempfile.TemporaryFile(dir=folder, prefix=".sparkinfer-probe-"):
        pass
