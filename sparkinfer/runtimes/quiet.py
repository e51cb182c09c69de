"""The frameworks' start-up notices, kept off the job's stderr unless `--verbose`.

TensorFlow 2.21 writes "oneDNN custom operations are on" through absl from C++ as its libraries
load, twice per process and whatever `TF_CPP_MIN_LOG_LEVEL` says, and every Python worker's
stderr reaches the user's terminal in local mode. So a model is loaded, and its framework
imported, with file descriptor 2 on /dev/null, and the frameworks' logging variables are set
for what they log later. A load that fails still raises: its exception is the error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Warnings and errors only, for what the frameworks log after they are loaded. A value the user
# set stays.
QUIET_LOGGING = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}


@contextmanager
def framework_notices(shown: bool) -> Iterator[None]:
    """Inside, unless `shown`, what C++ libraries print on the process's file descriptor 2
    goes to /dev/null: a model's framework is imported and loaded in here."""
    if shown:
        yield
        return
    for key, value in QUIET_LOGGING.items():
        os.environ.setdefault(key, value)
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
