"""`python -m pipeline ...` (and `accelerate launch -m pipeline ...`) runs the `aisdiff` command line."""
import sys

from pipeline.cli import main

sys.exit(main())
