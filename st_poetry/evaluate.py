"""`python -m st_poetry.evaluate`: the same as `st-poetry evaluate`, kept for the command people know."""

import sys

from st_poetry.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
