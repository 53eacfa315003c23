"""``python -m server.console``: the ``fedavg`` command."""

from server.console.main import main

main()
