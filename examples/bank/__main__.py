"""python -m examples.bank: the same as `eventsource demo`."""

from eventsource.cli import main

main(["demo"])
