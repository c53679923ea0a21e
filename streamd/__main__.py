"""`python -m streamd` is the `streamd` command."""

from streamd.cli import main

raise SystemExit(main())
