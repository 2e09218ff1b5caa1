import sys

from cagefs.cli.main import main

sys.exit(main())
