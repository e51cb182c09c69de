"""Where the soak's runs write (benchmarks/chaos.py), seen from outside the job: on a local
disk or on the S3 server, the chunks committed so far, the outputs' digests, what is left beside
them, and the report. The soak reads S3 straight from the server, never through the gate its
faults cut."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

from benchmarks.same_bytes import digest, digests
from sparkinfer.lock import LOCK_FILE

# The run's own entries beside the outputs that stay after a run: its report and (until the
# check says otherwise) its lock.
KEPT = {"_run.json", LOCK_FILE}
CHUNK = "_staging/*/chunk_*.tif"


def leftover(name: str) -> bool:
    """A path (relative to the output folder) no finished run leaves: a hidden file anywhere,
    or a job's entry (`_staging`) that is not the report or the lock."""
    parts = name.split("/")
    return any(p.startswith(".") for p in parts) or (
        parts[0].startswith("_") and parts[0] not in KEPT
    )


class LocalOutputs:
    """Runs' output folders under a local folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def location(self, run: str) -> str:
        return str(self.root / run)

    def committed(self, location: str) -> int:
        return sum(1 for _ in Path(location).glob(CHUNK))

    def digests(self, location: str) -> dict[str, str]:
        return digests(Path(location))

    def names(self, location: str) -> list[str]:
        folder = Path(location)
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    def read(self, location: str, name: str) -> bytes:
        return (Path(location) / name).read_bytes()

    def partial_uploads(self, location: str) -> int:
        return 0

    def remove(self, location: str) -> None:
        shutil.rmtree(location, ignore_errors=True)


class S3Outputs:
    """Runs' output prefixes in a bucket of the S3 server, read with boto3 at `endpoint`."""

    def __init__(self, bucket: str, endpoint: str, credentials: dict[str, str]) -> None:
        import boto3

        self.bucket = bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
            region_name=credentials["AWS_REGION"],
        )

    def location(self, run: str) -> str:
        return f"s3://{self.bucket}/{run}"

    def _prefix(self, location: str) -> str:
        return location.removeprefix(f"s3://{self.bucket}/") + "/"

    def names(self, location: str) -> list[str]:
        prefix = self._prefix(location)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return sorted(o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", []))

    def committed(self, location: str) -> int:
        return sum(fnmatch.fnmatch(name, CHUNK) for name in self.names(location))

    def read(self, location: str, name: str) -> bytes:
        key = self._prefix(location) + name
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def digests(self, location: str) -> dict[str, str]:
        return {
            name: digest(name, self.read(location, name))
            for name in self.names(location)
            # Not the folder's own marker object (named by the prefix alone), which
            # pyarrow's create_dir makes.
            if name and "/" not in name and not name.startswith(("_", "."))
        }

    def partial_uploads(self, location: str) -> int:
        """Multipart uploads begun and never completed or aborted under the location."""
        answer = self.client.list_multipart_uploads(
            Bucket=self.bucket, Prefix=self._prefix(location)
        )
        return len(answer.get("Uploads", []))

    def remove(self, location: str) -> None:
        for name in self.names(location):
            self.client.delete_object(Bucket=self.bucket, Key=self._prefix(location) + name)


def check(outputs: LocalOutputs | S3Outputs, location: str, expected: dict[str, str]) -> dict:
    """A finished run's outputs against the clean run's, what is left beside them and the lock
    (the report is read by the caller)."""
    found = outputs.digests(location)
    names = outputs.names(location)
    return {
        "outputs_checked": len(found),
        "mismatches": sorted(
            name for name in set(found) | set(expected) if found.get(name) != expected.get(name)
        ),
        "leftovers": [name for name in names if leftover(name)],
        "partial_uploads": outputs.partial_uploads(location),
        "lock_left": LOCK_FILE in names,
    }


def report(outputs: LocalOutputs | S3Outputs, location: str) -> dict:
    return json.loads(outputs.read(location, "_run.json"))
