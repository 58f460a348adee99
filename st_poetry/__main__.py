"""`python -m st_poetry COMMAND`: the same as the `st-poetry` command (and what `torchrun -m st_poetry` runs)."""

from st_poetry.cli import main

main()
