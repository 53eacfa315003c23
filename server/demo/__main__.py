"""``python -m server.demo``: the demo command."""

from server.demo.demo import main

main()
