"""spark-submit entry point: the command line of `sparkinfer.cli.main`, with the defaults of
conf/default.yaml.

    ./spark-submit.sh --input data/L7_ETMs.tif --model data/landcover.keras --output out/x
"""

import sys
from pathlib import Path

from sparkinfer.cli import main

# Absent where only this script travels (cluster deploy mode): the built-in defaults are the same.
DEFAULTS = Path(__file__).resolve().parent.parent / "conf" / "default.yaml"

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], defaults_file=DEFAULTS if DEFAULTS.is_file() else None))
