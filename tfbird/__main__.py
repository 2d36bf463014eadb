import sys

from tfbird.cli import main

sys.exit(main())
