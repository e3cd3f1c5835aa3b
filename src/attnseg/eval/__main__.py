"""`python -m attnseg.eval eval|report ...`."""

from attnseg.eval.cli import main

raise SystemExit(main())
