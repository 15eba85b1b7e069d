"""`python -m dnmp ...` runs the `dnmp` command (also what `torchrun -m dnmp` needs)."""
import sys

from dnmp.cli import main

if __name__ == "__main__":
    sys.exit(main())
