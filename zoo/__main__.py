"""``python -m zoo COMMAND``: the command line of :mod:`zoo.cli`."""
from .cli import main

raise SystemExit(main())
