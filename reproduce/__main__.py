import sys

from reproduce.runner import main

sys.exit(main())
