"""``python -m trainer``: see :func:`trainer.train.main`."""

from trainer.train import main

raise SystemExit(main())
