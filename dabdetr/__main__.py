"""`python -m dabdetr ...`: the `dabdetr` command without its console script."""

from dabdetr.cli import main

main()
