"""`python -m lfv_edge.modelbuild` builds an LFV-style model package (see cli.py)."""

from lfv_edge.modelbuild.cli import main

raise SystemExit(main())
