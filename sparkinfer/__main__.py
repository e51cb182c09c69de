"""`python -m sparkinfer`: the job's command line (see --help)."""

import sys

from sparkinfer.cli import main

sys.exit(main(sys.argv[1:]))
