import sys

from pvreal.cli import main

sys.exit(main())
