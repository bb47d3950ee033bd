import sys

from aitom.cli import main

sys.exit(main())
