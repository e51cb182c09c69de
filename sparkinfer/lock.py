"""The output folder's lock: one run at a time per output folder; and what a dead run left."""

from __future__ import annotations

import json
import os
import re
import socket
from contextlib import contextmanager
from datetime import UTC, datetime

from sparkinfer import storage
from sparkinfer.errors import OutputError

LOCK_FILE = "_sparkinfer.lock"
# What a killed run left of a staged file (`storage.staging_file`): the file, its VRT
# (`cogs.assemble_cog`), and GDAL's own temporary files named after it.
LEFTOVER = re.compile(rf"\..+\.[0-9a-f]{{{storage.UNIQUE_DIGITS}}}\.(tmp|vrt)(\..+)?")


class OutputLock:
    """One run at a time per output folder: a lock file naming its holder (host, pid, start).

    A lock left by a run that died on this host (its pid is gone) is taken over. On S3 the lock
    is advisory (see `storage.create_new`).
    """

    def __init__(self, output: str) -> None:
        self.path = storage.join(output, LOCK_FILE)

    def _live_holder(self) -> dict | None:
        try:
            holder = json.loads(storage.read_text(self.path))
        except (OSError, ValueError):
            return None
        if holder.get("host") == socket.gethostname():
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return None  # that run is gone
            except PermissionError:
                pass  # alive, another user's
        return holder

    def check(self) -> None:
        """Raise OutputError if a live run holds the folder."""
        holder = self._live_holder() if storage.is_file(self.path) else None
        if holder is not None:
            raise OutputError(
                f"{storage.parent(self.path)}: in use by another run (pid {holder.get('pid')} "
                f"on {holder.get('host')}, since {holder.get('started')}); wait for it, or "
                f"delete {self.path} if that run is gone"
            )

    @contextmanager
    def held(self):
        me = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        if not storage.create_new(self.path, me):
            # A stale lock is removed only by a run that holds the takeover, so no lock can be
            # removed between its check and its removal: of the runs that find it stale, one
            # creates the next lock and the others find that one live.
            with storage.exclusive(storage.parent(self.path)):
                self.check()
                storage.remove(self.path)  # stale: its run is gone
                if not storage.create_new(self.path, me):  # a run not taking over was first
                    self.check()
                    raise OutputError(f"{storage.parent(self.path)}: in use by another run")
        try:
            yield
        finally:
            storage.remove(self.path)


def remove_leftovers(folder: str) -> None:
    """Delete the hidden files (`LEFTOVER`) that a killed run left in a local folder. Only
    under the folder's lock, which no other run writes beneath."""
    if storage.is_s3(folder) or not os.path.isdir(folder):
        return  # on S3, files are staged on the writer's machine
    for name in os.listdir(folder):
        if LEFTOVER.fullmatch(name):
            os.remove(os.path.join(folder, name))
