import sys

from selectivbench.cli import main

sys.exit(main())
