"""Every SQL statement of the command queue, built once per schema.

Statements run on the psycopg connection itself with psycopg placeholders (``%(name)s``, and
``%(name)b`` for arrays sent in binary). Values are always bound parameters, never SQL text.
"""

from __future__ import annotations

from ._queries import _PREPARER

__all__ = ["CommandQueries", "command_channel"]

# An ordering key's enqueues are serialised by this advisory lock (held to commit), so that
# the ids of one key's commands follow their commit order; see ``claim``.
_KEY_LOCK = "pg_advisory_xact_lock(hashtextextended('eventsource.command:' || {key}, 0))"

_ENQUEUE_COLUMNS = (
    "queue, command_type, payload, priority, max_attempts, run_at, dedupe_key, ordering_key,"
    " correlation_id, causation_id"
)
_DEDUPE_CONFLICT = (
    "ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status = 'pending'"
    " AND started_at IS NULL DO NOTHING"
)
_LIST_COLUMNS = (
    "id, queue, command_type, status, priority, attempts, max_attempts, run_at, lease_until,"
    " worker, dedupe_key, ordering_key, correlation_id, last_error, error_traceback,"
    " enqueued_at, updated_at, payload::text"
)


def command_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which enqueues to ``schema`` announce their queues."""
    return f"eventsource.{schema}.commands"


class CommandQueries:
    """The command queue's statements for one schema (already quoted)."""

    def __init__(self, quoted: str, schema: str) -> None:
        s = quoted
        self.channel = command_channel(schema)
        self.listen = f"LISTEN {_PREPARER.quote(self.channel)}"
        self.notify = "SELECT pg_notify(%(channel)s, %(payload)s)"
        values = (
            "%(queue)s, %(command_type)s, %(payload)s::jsonb, %(priority)s, %(max_attempts)s,"
            " coalesce(%(run_at)s::timestamptz, now())"
            " + make_interval(secs => coalesce(%(delay)s::float8, 0)),"
            " %(dedupe_key)s, %(ordering_key)s, %(correlation_id)s, %(causation_id)s"
        )
        insert = f"INSERT INTO {s}.commands ({_ENQUEUE_COLUMNS})"
        # One command without dedupe or ordering key: a plain insert (the most common case).
        self.enqueue_plain = f"{insert} VALUES ({values}) RETURNING id, false"
        # One command: its id, or the pending duplicate's id when the dedupe key is taken.
        self.enqueue = (
            f"WITH ins AS ({insert} VALUES ({values}) {_DEDUPE_CONFLICT} RETURNING id)"
            " SELECT id, false FROM ins UNION ALL"
            f" SELECT id, true FROM {s}.commands WHERE NOT EXISTS (SELECT 1 FROM ins)"
            " AND dedupe_key = %(dedupe_key)s AND status = 'pending' AND started_at IS NULL"
        )
        self.enqueue_keyed = (
            f"WITH lock AS (SELECT {_KEY_LOCK.format(key='%(ordering_key)s')}),"
            f" ins AS ({insert} SELECT {values} FROM lock {_DEDUPE_CONFLICT} RETURNING id)"
            " SELECT id, false FROM ins UNION ALL"
            f" SELECT id, true FROM {s}.commands WHERE NOT EXISTS (SELECT 1 FROM ins)"
            " AND dedupe_key = %(dedupe_key)s AND status = 'pending' AND started_at IS NULL"
        )
        # Many commands in one statement (parameters: one array per column of ``enqueue``);
        # the new ids, in input order.
        self.enqueue_many = (
            "WITH lock AS (SELECT count(*) AS n FROM (SELECT " + _KEY_LOCK.format(key="k") + ""
            " FROM (SELECT DISTINCT k FROM unnest(%(ordering_key)b::text[]) AS k"
            "  WHERE k IS NOT NULL ORDER BY k) AS keys) AS locked),"
            f" ins AS ({insert}"
            " SELECT u.q, u.t, u.p::jsonb, u.pr, u.ma,"
            " coalesce(u.ra, now()) + make_interval(secs => coalesce(u.d, 0)),"
            " u.dk, u.ok, u.ci, u.ca"
            " FROM lock, unnest(%(queue)b::text[], %(command_type)b::text[],"
            " %(payload)b::text[], %(priority)b::integer[], %(max_attempts)b::integer[],"
            " %(run_at)b::timestamptz[], %(delay)b::float8[], %(dedupe_key)b::text[],"
            " %(ordering_key)b::text[], %(correlation_id)b::text[], %(causation_id)b::text[])"
            " WITH ORDINALITY AS u(q, t, p, pr, ma, ra, d, dk, ok, ci, ca, n)"
            f" ORDER BY u.n {_DEDUPE_CONFLICT} RETURNING id)"
            " SELECT id FROM ins ORDER BY id"
        )
        # Claim: ready commands of these queues and types, best priority first, then oldest;
        # a keyed command only when no earlier live command of its key exists and none of its
        # key is running (so one key runs one at a time, in enqueue order).
        self.claim = (
            f"WITH ready AS (SELECT c.id FROM {s}.commands c"
            " WHERE c.status = 'pending' AND c.queue = ANY(%(queues)b::text[])"
            " AND c.run_at <= now() AND c.command_type = ANY(%(types)b::text[])"
            " AND (c.ordering_key IS NULL OR NOT EXISTS ("
            f"  SELECT 1 FROM {s}.commands p WHERE p.ordering_key = c.ordering_key"
            "  AND p.status <> 'dead' AND p.id <> c.id"
            "  AND (p.id < c.id OR p.status = 'running')))"
            " ORDER BY c.priority DESC, c.run_at, c.id LIMIT %(limit)b FOR UPDATE SKIP LOCKED)"
            f" UPDATE {s}.commands t SET status = 'running', attempts = t.attempts + 1,"
            " lease_token = gen_random_uuid(),"
            " lease_until = now() + make_interval(secs => %(lease)b::float8),"
            " worker = %(worker)b, started_at = now(), updated_at = now()"
            " FROM ready WHERE t.id = ready.id"
            " RETURNING t.id, t.queue, t.command_type, t.payload::text, t.attempts,"
            " t.max_attempts, t.lease_token, t.correlation_id, t.causation_id, t.enqueued_at"
        )
        fenced = (
            " FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[]) AS u(id, token)"
            " WHERE c.id = u.id AND c.lease_token = u.token AND c.status = 'running'"
        )
        # Ack, heartbeat and release count only for the lease token of the current attempt:
        # a worker whose lease ran out (and was reclaimed) cannot touch the command again.
        self.ack = f"DELETE FROM {s}.commands c USING" + fenced[5:] + " RETURNING c.id"
        self.ack_one = (
            f"DELETE FROM {s}.commands WHERE id = %(id)s AND lease_token = %(token)s"
            " AND status = 'running' RETURNING id"
        )
        self.extend = (
            f"UPDATE {s}.commands c SET lease_until = now() + make_interval(secs =>"
            " %(lease)b::float8)" + fenced + " RETURNING c.id"
        )
        self.release = (
            f"UPDATE {s}.commands c SET status = 'pending', attempts = c.attempts - 1,"
            " lease_token = NULL, lease_until = NULL, worker = NULL, updated_at = now()"
            + fenced
            + " RETURNING c.id"
        )
        # A failed attempt: retry after ``delay`` seconds, or dead once attempts are used up.
        self.fail = (
            f"UPDATE {s}.commands SET"
            " status = CASE WHEN attempts >= max_attempts THEN 'dead'"
            " ELSE 'pending' END,"
            " run_at = now() + make_interval(secs => %(delay)s::float8),"
            " lease_token = NULL, lease_until = NULL, worker = NULL,"
            " last_error = %(error)s, error_traceback = %(traceback)s, updated_at = now()"
            " WHERE id = %(id)s AND lease_token = %(token)s AND status = 'running'"
            " RETURNING status, attempts"
        )
        # Expired leases (a worker died or stalled): back to pending, or dead when that was
        # the last attempt. Any live worker runs this with its heartbeat.
        self.reap = (
            f"UPDATE {s}.commands t SET"
            " status = CASE WHEN t.attempts >= t.max_attempts THEN 'dead' ELSE 'pending' END,"
            " last_error = 'the lease of worker ' || coalesce(t.worker, '?') || ' expired"
            " (the worker died, stalled or lost the database) during attempt ' || t.attempts,"
            " lease_token = NULL, lease_until = NULL, worker = NULL, run_at = now(),"
            " updated_at = now()"
            f" FROM (SELECT id FROM {s}.commands WHERE status = 'running' AND lease_until < now()"
            " FOR UPDATE SKIP LOCKED) AS x WHERE t.id = x.id"
            " RETURNING t.id, t.status, t.command_type"
        )
        # Pending commands of this worker's queues that no handler here can run: shown with
        # ``commands list`` (once per command, not rewritten on every beat).
        self.unhandled = (
            f"UPDATE {s}.commands SET last_error = 'no handler for command type '"
            " || command_type || ' in worker ' || %(worker)s::text, updated_at = now()"
            " WHERE status = 'pending' AND queue = ANY(%(queues)b::text[])"
            " AND run_at <= now() AND NOT (command_type = ANY(%(types)b::text[]))"
            " AND last_error IS NULL RETURNING id, command_type"
        )
        self.remaining = (
            f"SELECT count(*) FROM {s}.commands WHERE status IN ('pending', 'running')"
            " AND queue = ANY(%(queues)b::text[]) AND command_type = ANY(%(types)b::text[])"
        )
        self.list = (
            f"SELECT {_LIST_COLUMNS} FROM {s}.commands"
            " WHERE status = ANY(%(statuses)s::text[])"
            " AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)"
            " ORDER BY id LIMIT %(limit)s"
        )
        self.get = f"SELECT {_LIST_COLUMNS} FROM {s}.commands WHERE id = %(id)s"
        self.retry = (
            f"UPDATE {s}.commands SET status = 'pending', run_at = now(),"
            " max_attempts = attempts + %(attempts)s, updated_at = now()"
            " WHERE id = %(id)s AND status = 'dead' RETURNING queue"
        )
        self.purge = (
            f"DELETE FROM {s}.commands WHERE status = 'dead'"
            " AND updated_at < now() - make_interval(secs => %(older_than)s::float8)"
            " AND (%(queue)s::text IS NULL OR queue = %(queue)s::text) RETURNING id"
        )
        self.counts = (
            f"SELECT queue, status, count(*), min(enqueued_at) FROM {s}.commands"
            " GROUP BY queue, status ORDER BY queue, status"
        )

    def enqueue_for(self, params: dict[str, object]) -> str:
        """The enqueue statement for one command's parameters."""
        if params["ordering_key"] is not None:
            return self.enqueue_keyed
        return self.enqueue if params["dedupe_key"] is not None else self.enqueue_plain
