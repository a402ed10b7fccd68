"""`python -m distill.cli`: the `wavedistill` command."""

from distill.cli.main import main

raise SystemExit(main())
