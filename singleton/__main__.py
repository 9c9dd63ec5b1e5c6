import sys

from singleton.ops.cli import main

sys.exit(main())
