"""`python -m fastgear` runs the same command as the `fastgear` script."""
import sys

from fastgear import cli

sys.exit(cli.main())
