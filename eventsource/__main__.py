"""python -m eventsource: the same as the `eventsource` command."""

from eventsource.cli import main

main()
