"""The command queue's SQL statements, kept in ``queries.sql`` and rendered once per schema.

Statements run on the psycopg connection itself with psycopg placeholders (``%(name)s``, and
``%(name)b`` for arrays sent in binary). Values are always bound parameters, never SQL text.
What the statements rely on (ordering keys, attempt counting, lease tokens) is described at
the top of ``queries.sql``.
"""

from __future__ import annotations

from eventsource.db import Statements

__all__ = ["CommandQueries", "command_queries"]


class CommandQueries(Statements):
    """The command queue's statements for one schema, from ``queries.sql``.

    Besides the statements: ``channel``, the schema's LISTEN/NOTIFY channel, and ``listen``,
    the ``LISTEN`` statement for it.
    """

    package = "eventsource.commands"
    filename = "queries.sql"
    channel_suffix = ".commands"  # the schema's command channel: eventsource.<schema>.commands
    direct_names = ("enqueue_plain", "enqueue_plain_notify")  # run alone: the hottest

    notify: str
    enqueue_plain: str
    enqueue_plain_notify: str
    enqueue: str
    enqueue_keyed: str
    enqueue_many: str
    claim: str
    claim_one_queue: str
    ack: str
    ack_one: str
    extend: str
    extend_keys: str
    release_key: str
    release: str
    fail: str
    reap: str
    unhandled: str
    remaining: str
    list: str
    get: str
    retry: str
    purge: str
    counts: str
    idle_timeout: str

    def enqueue_for(self, params: dict[str, object]) -> str:
        """The enqueue statement for one command's parameters."""
        if params["ordering_key"] is not None:
            return self.enqueue_keyed
        return self.enqueue if params["dedupe_key"] is not None else self.enqueue_plain


command_queries = CommandQueries.for_schema  # the command queue's statements for a schema
