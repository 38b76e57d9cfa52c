import sys

from mltfr.cli import main

sys.exit(main())
