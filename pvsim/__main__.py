import sys

from pvsim.cli import main

sys.exit(main())
