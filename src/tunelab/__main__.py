"""`python -m tunelab ...` runs the command line (worker processes are started this way)."""

from tunelab.cli import main

raise SystemExit(main())
