"""``python -m edgeresnet.cli``: the same as the ``edgeresnet`` command."""

from edgeresnet.cli import main

main()
