"""`python -m fastgear.bench` runs the load generator (same as `fastgear bench`)."""
import sys

from fastgear.bench import main

sys.exit(main())
