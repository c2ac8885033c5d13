"""``python -m trainer``: see :func:`trainer.cli.main`."""

from trainer.cli import main

raise SystemExit(main())
