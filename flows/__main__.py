"""`python -m flows ...` is the same as `geor ...`."""

from flows.cli import main

raise SystemExit(main())
