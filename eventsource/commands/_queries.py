"""Every SQL statement of the command queue, built once per schema.

Statements run on the psycopg connection itself with psycopg placeholders (``%(name)s``, and
``%(name)b`` for arrays sent in binary). Values are always bound parameters, never SQL text.
"""

from __future__ import annotations

import functools

from eventsource.db import channel_name, listen_statement, quote_schema

__all__ = ["CommandQueries", "command_channel", "command_queries"]

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
    return channel_name(schema, ".commands")


class CommandQueries:
    """The command queue's statements for one schema (already quoted).

    Times that must hold however long a transaction has been open (leases, a delay given
    to an enqueue in a transaction) are taken from ``clock_timestamp()``, the database's
    clock at that moment, not from ``now()``, the start of the transaction.
    """

    def __init__(self, quoted: str, schema: str) -> None:
        s = quoted
        self.channel = command_channel(schema)
        self.listen = listen_statement(self.channel)
        self.notify = "SELECT pg_notify(%(channel)s, %(payload)s)"
        values = (
            "%(queue)s, %(command_type)s, %(payload)s::jsonb, %(priority)s, %(max_attempts)s,"
            " coalesce(%(run_at)s::timestamptz,"
            "  CASE WHEN %(delay)s::float8 IS NULL THEN now() ELSE clock_timestamp() END)"
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
            " coalesce(u.ra, CASE WHEN u.d IS NULL THEN now() ELSE clock_timestamp() END)"
            " + make_interval(secs => coalesce(u.d, 0)),"
            " u.dk, u.ok, u.ci, u.ca"
            " FROM lock, unnest(%(queue)b::text[], %(command_type)b::text[],"
            " %(payload)b::text[], %(priority)b::integer[], %(max_attempts)b::integer[],"
            " %(run_at)b::timestamptz[], %(delay)b::float8[], %(dedupe_key)b::text[],"
            " %(ordering_key)b::text[], %(correlation_id)b::text[], %(causation_id)b::text[])"
            " WITH ORDINALITY AS u(q, t, p, pr, ma, ra, d, dk, ok, ci, ca, n)"
            f" ORDER BY u.n {_DEDUPE_CONFLICT} RETURNING id)"
            " SELECT id FROM ins ORDER BY id"
        )
        # Claim: ready commands of these queues and types, best priority first, then oldest.
        # A keyed command only when no earlier live command of its key exists and its key is
        # free: the claim inserts the key into ``command_keys``, whose primary key makes two
        # claims of one key exclusive whatever their snapshots saw (one waits for the other,
        # then finds the key taken and leaves the command alone). Only the first command of
        # the batch (``k`` = 1, run first) has its attempt counted here; the others' are
        # counted by the heartbeat while they run (``extend``) or when they fail, so that
        # commands that never start (the worker died first) are not charged an attempt.
        self.claim = self._claim(s, "c.queue = ANY(%(queues)b::text[])")
        # One queue (the usual case): its ready commands come in the index's order, so a
        # claim reads only the rows it takes instead of sorting every pending command.
        self.claim_one_queue = self._claim(s, "c.queue = %(queue)b::text")
        fenced = (
            " FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[]) AS u(id, token)"
            " WHERE c.id = u.id AND c.lease_token = u.token AND c.status = 'running'"
        )
        # The keys of the commands a statement ended (acked, failed, released): free again.
        free_keys = (
            f", freed AS (DELETE FROM {s}.command_keys k USING done"
            " WHERE k.ordering_key = done.ordering_key AND k.command_id = done.id)"
        )
        # Ack, heartbeat and release count only for the lease token of the current attempt:
        # a worker whose lease ran out (and was reclaimed) cannot touch the command again.
        self.ack = (
            f"WITH done AS (DELETE FROM {s}.commands c USING"
            + fenced[5:]
            + " RETURNING c.id, c.ordering_key)"
            + free_keys
            + " SELECT id FROM done"
        )
        # The ack of a handler's ``ctx.tx``, just before its commit (whose transaction may
        # not sit idle longer than a lease: see the worker's ``_handler_tx``).
        self.ack_one = (
            f"WITH done AS (DELETE FROM {s}.commands WHERE id = %(id)s AND lease_token = %(token)s"
            " AND status = 'running' RETURNING id, ordering_key)"
            + free_keys
            + " SELECT id FROM done"
        )
        # The heartbeat: extend the leases of the commands held (and count the attempts of
        # those that started since: ``attempts``, the worker's count). Rows locked by a
        # handler's ``ctx.tx`` between its ack and its commit are skipped, not waited for:
        # they are done in a moment, and the other leases must not wait behind them.
        self.extend = (
            f"WITH held AS (SELECT c.id FROM {s}.commands c"
            " JOIN unnest(%(ids)b::bigint[], %(tokens)b::uuid[]) AS u(id, token)"
            " ON c.id = u.id AND c.lease_token = u.token AND c.status = 'running'"
            " FOR UPDATE OF c SKIP LOCKED)"
            f" UPDATE {s}.commands c SET"
            " lease_until = clock_timestamp() + make_interval(secs => %(lease)b::float8),"
            " attempts = greatest(c.attempts, u.attempt)"
            " FROM unnest(%(ids)b::bigint[], %(attempts)b::integer[]) AS u(id, attempt)"
            " WHERE c.id = u.id AND c.id IN (SELECT id FROM held) RETURNING c.id"
        )
        # The keys this worker holds, extended with its heartbeat (a handler past its
        # timeout keeps its key until its thread returns, though its command is no longer
        # running); skipped while a ``ctx.tx`` that acks the key's command holds the row.
        self.extend_keys = (
            f"UPDATE {s}.command_keys k"
            " SET lease_until = clock_timestamp() + make_interval(secs => %(lease)b::float8)"
            f" WHERE (k.ordering_key, k.command_id) IN (SELECT x.ordering_key, x.command_id"
            f"  FROM {s}.command_keys x"
            "  JOIN unnest(%(keys)b::text[], %(ids)b::bigint[]) AS u(key, id)"
            "  ON x.ordering_key = u.key AND x.command_id = u.id FOR UPDATE OF x SKIP LOCKED)"
            " RETURNING k.ordering_key"
        )
        # A key given up by its command: after a timed-out handler's thread returned.
        self.release_key = (
            f"DELETE FROM {s}.command_keys WHERE ordering_key = %(key)s AND command_id = %(id)s"
        )
        # Hand back commands whose handlers never started: no attempt spent (``attempts``,
        # the worker's count before this claim).
        self.release = (
            f"WITH done AS (UPDATE {s}.commands c SET status = 'pending',"
            " attempts = least(c.attempts, a.attempt),"
            " lease_token = NULL, lease_until = NULL, worker = NULL,"
            " updated_at = clock_timestamp()"
            " FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[], %(attempts)b::integer[])"
            " AS a(id, token, attempt)"
            " WHERE c.id = a.id AND c.lease_token = a.token AND c.status = 'running'"
            " RETURNING c.id, c.ordering_key)" + free_keys + " SELECT id FROM done"
        )
        # A failed attempt (number ``attempt``): retry after ``delay`` seconds, or dead once
        # attempts are used up. Its key is freed unless its handler still runs (``keep_key``:
        # it ran past its timeout).
        self.fail = (
            f"WITH done AS (UPDATE {s}.commands SET"
            " status = CASE WHEN %(attempt)s >= max_attempts THEN 'dead' ELSE 'pending' END,"
            " attempts = %(attempt)s,"
            " run_at = clock_timestamp() + make_interval(secs => %(delay)s::float8),"
            " lease_token = NULL, lease_until = NULL, worker = NULL,"
            " last_error = %(error)s, error_traceback = %(traceback)s,"
            " updated_at = clock_timestamp()"
            " WHERE id = %(id)s AND lease_token = %(token)s AND status = 'running'"
            " RETURNING id, ordering_key, status, attempts),"
            f" freed AS (DELETE FROM {s}.command_keys k USING done"
            " WHERE NOT %(keep_key)s AND k.ordering_key = done.ordering_key"
            " AND k.command_id = done.id)"
            " SELECT status, attempts FROM done"
        )
        # Expired leases (a worker died or stalled): back to pending, or dead when that was
        # the last attempt; keys whose lease ran out are freed. Any live worker runs this
        # with its heartbeat.
        self.reap = (
            f"WITH keys AS (DELETE FROM {s}.command_keys k WHERE k.ordering_key IN ("
            f" SELECT ordering_key FROM {s}.command_keys WHERE lease_until < clock_timestamp()"
            " FOR UPDATE SKIP LOCKED)),"
            f" reaped AS (UPDATE {s}.commands t SET"
            " status = CASE WHEN t.attempts >= t.max_attempts THEN 'dead' ELSE 'pending' END,"
            " last_error = 'the lease of worker ' || coalesce(t.worker, '?') || ' expired"
            " (the worker died, stalled or lost the database) during attempt ' || t.attempts,"
            " lease_token = NULL, lease_until = NULL, worker = NULL, run_at = clock_timestamp(),"
            " updated_at = clock_timestamp()"
            f" FROM (SELECT id FROM {s}.commands WHERE status = 'running'"
            " AND lease_until < clock_timestamp() FOR UPDATE SKIP LOCKED) AS x WHERE t.id = x.id"
            " RETURNING t.id, t.status, t.command_type)"
            " SELECT id, status, command_type FROM reaped"
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

    @staticmethod
    def _claim(s: str, queues: str) -> str:
        """The claim statement, for ``queues`` (a condition on ``c.queue``)."""
        # Ready commands of these queues and types, best priority first, then oldest. A
        # keyed command only when no earlier live command of its key exists and its key is
        # free: the claim inserts the key into ``command_keys``, whose primary key makes two
        # claims of one key exclusive whatever their snapshots saw (one waits for the other,
        # then finds the key taken and leaves the command alone). Only the first command of
        # the batch (run first) has its attempt counted here; the others' are counted by the
        # heartbeat while they run (``extend``) or when they fail, so that commands that
        # never start (the worker died first) are not charged an attempt. ``k`` = 1 marks
        # the first.
        # Committed without waiting for its WAL flush: a claim that a server crash loses
        # leaves its commands pending, to be claimed and run again (delivery is at least once
        # either way), and a handler starts without waiting for the disk.
        return (
            "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS v),"
            f" ready AS (SELECT c.id, c.ordering_key, c.priority, c.run_at"
            f" FROM {s}.commands c, cfg"
            f" WHERE c.status = 'pending' AND {queues}"
            " AND c.run_at <= now() AND c.command_type = ANY(%(types)b::text[])"
            " AND (c.ordering_key IS NULL OR (NOT EXISTS ("
            f"  SELECT 1 FROM {s}.commands p WHERE p.ordering_key = c.ordering_key"
            "  AND p.status <> 'dead' AND p.id < c.id)"
            f" AND NOT EXISTS (SELECT 1 FROM {s}.command_keys k"
            "  WHERE k.ordering_key = c.ordering_key)))"
            " ORDER BY c.priority DESC, c.run_at, c.id LIMIT %(limit)b"
            " FOR UPDATE OF c SKIP LOCKED),"
            f" keyed AS (INSERT INTO {s}.command_keys AS k (ordering_key, command_id, worker,"
            " lease_until)"
            " SELECT DISTINCT ON (r.ordering_key) r.ordering_key, r.id, %(worker)b,"
            " clock_timestamp() + make_interval(secs => %(lease)b::float8)"
            " FROM ready r WHERE r.ordering_key IS NOT NULL ORDER BY r.ordering_key, r.id"
            " ON CONFLICT (ordering_key) DO NOTHING RETURNING k.command_id),"
            " taken AS (SELECT r.id, r.priority, r.run_at FROM ready r"
            " WHERE r.ordering_key IS NULL OR r.id IN (SELECT command_id FROM keyed)),"
            " first AS (SELECT id FROM taken ORDER BY priority DESC, run_at, id LIMIT 1)"
            f" UPDATE {s}.commands t SET status = 'running',"
            " attempts = t.attempts + (t.id = first.id)::integer,"
            " lease_token = gen_random_uuid(),"
            " lease_until = clock_timestamp() + make_interval(secs => %(lease)b::float8),"
            " worker = %(worker)b, started_at = clock_timestamp(), updated_at = clock_timestamp()"
            " FROM taken, first WHERE t.id = taken.id"
            " RETURNING t.id, t.queue, t.command_type, t.payload::text,"
            " t.attempts + (t.id <> first.id)::integer, t.max_attempts, t.lease_token,"
            " t.correlation_id, t.causation_id, t.enqueued_at, t.ordering_key,"
            " t.priority, t.run_at, t.id = first.id"
        )

    def enqueue_for(self, params: dict[str, object]) -> str:
        """The enqueue statement for one command's parameters."""
        if params["ordering_key"] is not None:
            return self.enqueue_keyed
        return self.enqueue if params["dedupe_key"] is not None else self.enqueue_plain


@functools.lru_cache(maxsize=256)
def command_queries(schema: str) -> CommandQueries:
    """The command queue's statements for ``schema``, built once per schema and process."""
    return CommandQueries(quote_schema(schema), schema)
