"""Lets `python -m pybootc` behave like the `bootc` console script."""

from pybootc.cli import main

raise SystemExit(main())
