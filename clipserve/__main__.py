import sys

from clipserve.cli import main

sys.exit(main())
