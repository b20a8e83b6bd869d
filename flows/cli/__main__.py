"""`python -m flows.cli ...` is `rlt ...`."""
import sys

from flows.cli import main

sys.exit(main())
