"""`python -m lfv_edge` is the `lfv-edge` command."""

from lfv_edge.cli import main

raise SystemExit(main())
