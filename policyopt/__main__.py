import sys

from policyopt.cli import main

sys.exit(main())
