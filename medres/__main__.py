"""``python -m medres`` = the ``medres`` command."""

from medres.cli import main

main()
