import sys

from flowdiff.cli import main

sys.exit(main())
