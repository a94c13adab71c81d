import sys

from ociklein.cli import main

sys.exit(main())
