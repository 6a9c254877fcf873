"""``python -m metrics fusion --a DIR --b DIR --fused DIR --out scores.csv``."""

from metrics.cli import main

raise SystemExit(main())
