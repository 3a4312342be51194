"""Runnable domain services built on eventsource, used as a user would use the framework.

The wheel ships them as ``eventsource._examples`` (for ``eventsource demo``); in a checkout they
run as ``examples``, e.g. ``python -m examples.bank --help``.
"""
