-- The command queue's statements (loaded by eventsource/commands/_queries.py). SQL that
-- several statements share is a fragment (see eventsource/db/_sql.py), written just before
-- the statements that include it.
--
-- Statements run on psycopg connections directly: ``%(name)s`` parameters, and ``%(name)b``
-- for the arrays that the worker and ``enqueue_many`` send in binary. Values are always bound
-- parameters, never SQL text.
--
-- Times that must hold however long a transaction has been open (leases, a delay given to an
-- enqueue in a transaction) are taken from clock_timestamp(), the database's clock at that
-- moment, not from now(), the start of the transaction.
--
-- Ordering keys. The enqueues of one key are serialised by an advisory lock held to commit,
-- so that the ids of one key's commands follow their commit order. A keyed command is claimed
-- only when no earlier live command of its key exists and its key is free: the claim inserts
-- the key into command_keys, whose primary key makes two claims of one key exclusive whatever
-- their snapshots saw (one waits for the other, then finds the key taken and leaves the
-- command alone). The statements that end a command (ack, release, fail) free its key.
--
-- Attempts. Only the first command of a claimed batch (the row whose last column is true,
-- run first) has its attempt counted by the claim; the others' are counted by the heartbeat
-- once they start (extend) or when they fail, so that commands that never start (the worker
-- died first) are not charged an attempt. The claim commits without waiting for its WAL
-- flush: a claim that a server crash loses leaves its commands pending, to be claimed and run
-- again (delivery is at least once either way), and a handler starts without waiting for the
-- disk.
--
-- Fencing. Ack, heartbeat, release and fail count only for the lease token of the current
-- attempt: a worker whose lease ran out (and was reclaimed) cannot touch the command again.

-- name: notify
-- Announce queues inside the caller's transaction (sent when it commits).
SELECT pg_notify(%(channel)s, %(payload)s)

-- fragment: insert_command
-- The insert of every enqueue: the queue's columns, in the order of the values that follow.
INSERT INTO {schema}.commands (
    queue, command_type, payload, priority, max_attempts, run_at, dedupe_key,
    ordering_key, correlation_id, causation_id, trace_context
)

-- fragment: command_values
-- One command's values for insert_command, from the statement's parameters. Its run_at is the
-- given time, or else the transaction's start (the database's clock when a delay is given),
-- plus the delay.
%(queue)s, %(command_type)s, %(payload)s::jsonb, %(priority)s, %(max_attempts)s,
coalesce(
    %(run_at)s::timestamptz,
    CASE WHEN %(delay)s::float8 IS NULL THEN now() ELSE clock_timestamp() END
) + make_interval(secs => coalesce(%(delay)s::float8, 0)),
%(dedupe_key)s, %(ordering_key)s, %(correlation_id)s, %(causation_id)s,
%(trace_context)s::jsonb

-- fragment: skip_pending_duplicate
-- The end of an insert_command that dedupes: no insert when a pending command that has not
-- started yet holds the dedupe key (it stands for the new one); the new ids.
ON CONFLICT (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status = 'pending' AND started_at IS NULL
    DO NOTHING
RETURNING id

-- fragment: new_or_duplicate
-- The result of one command's deduped insert ins: its id and false, or else the pending
-- duplicate's id and true.
SELECT id, false FROM ins
UNION ALL
SELECT id, true FROM {schema}.commands
WHERE NOT EXISTS (SELECT 1 FROM ins)
    AND dedupe_key = %(dedupe_key)s AND status = 'pending' AND started_at IS NULL

-- name: enqueue_plain
-- One command without dedupe or ordering key: a plain insert (the most common case).
-- include: insert_command
VALUES (
    -- include: command_values
)
RETURNING id, false

-- name: enqueue_plain_notify
-- `enqueue_plain` that also announces its queue on the channel, delivered when it commits: the
-- first enqueue after a quiet spell wakes an idle worker without a hop through the announcer.
-- Its commit takes PostgreSQL's notify lock, so only the first of a burst is sent this way.
WITH ins AS (
    -- include: insert_command
    VALUES (
        -- include: command_values
    )
    RETURNING id
)
SELECT id, false, pg_notify(%(channel)s, %(queue)s) FROM ins

-- name: enqueue
-- One command with a dedupe key: its id, or the pending duplicate's id when the key is taken.
WITH ins AS (
    -- include: insert_command
    VALUES (
        -- include: command_values
    )
    -- include: skip_pending_duplicate
)
-- include: new_or_duplicate

-- name: enqueue_keyed
-- One command with an ordering key, under its key's advisory lock (and dedupe as `enqueue`).
WITH lock AS (
    SELECT pg_advisory_xact_lock(hashtextextended('eventsource.command:' || %(ordering_key)s, 0))
),
ins AS (
    -- include: insert_command
    SELECT
        -- include: command_values
    FROM lock
    -- include: skip_pending_duplicate
)
-- include: new_or_duplicate

-- name: enqueue_many
-- Many commands in one statement (one array per column of `enqueue`); new ids in input order.
WITH lock AS (
    SELECT count(*) AS n
    FROM (
        SELECT pg_advisory_xact_lock(hashtextextended('eventsource.command:' || k, 0))
        FROM (
            SELECT DISTINCT k FROM unnest(%(ordering_key)b::text[]) AS k
            WHERE k IS NOT NULL ORDER BY k
        ) AS keys
    ) AS locked
),
ins AS (
    -- include: insert_command
    SELECT
        u.q, u.t, u.p::jsonb, u.pr, u.ma,
        coalesce(u.ra, CASE WHEN u.d IS NULL THEN now() ELSE clock_timestamp() END)
            + make_interval(secs => coalesce(u.d, 0)),
        u.dk, u.ok, u.ci, u.ca, u.tc::jsonb
    FROM lock, unnest(
        %(queue)b::text[], %(command_type)b::text[], %(payload)b::text[],
        %(priority)b::integer[], %(max_attempts)b::integer[], %(run_at)b::timestamptz[],
        %(delay)b::float8[], %(dedupe_key)b::text[], %(ordering_key)b::text[],
        %(correlation_id)b::text[], %(causation_id)b::text[], %(trace_context)b::text[]
    ) WITH ORDINALITY AS u(q, t, p, pr, ma, ra, d, dk, ok, ci, ca, tc, n)
    ORDER BY u.n
    -- include: skip_pending_duplicate
)
SELECT id FROM ins ORDER BY id

-- fragment: claimable
-- The end of the CTE ready of both claims, after their queue test: commands due, of the given
-- types, keyed ones only when no earlier live command of their key exists and the key is free;
-- best priority first, then oldest; at most limit of them, locked (skipping rows others lock).
    AND c.run_at <= now() AND c.command_type = ANY(%(types)b::text[])
    AND (c.ordering_key IS NULL OR (
        NOT EXISTS (
            SELECT 1 FROM {schema}.commands p WHERE p.ordering_key = c.ordering_key
            AND p.status <> 'dead' AND p.id < c.id
        )
        AND NOT EXISTS (
            SELECT 1 FROM {schema}.command_keys k WHERE k.ordering_key = c.ordering_key
        )
    ))
ORDER BY c.priority DESC, c.run_at, c.id
LIMIT %(limit)b
FOR UPDATE OF c SKIP LOCKED

-- fragment: lease_ready
-- The end of both claims, after ready: take the keys of the keyed commands (a key that another
-- claim took first leaves its command alone), lease the commands taken with a new token, count
-- the attempt of the first one only, and return them as claimed, the first with true.
keyed AS (
    INSERT INTO {schema}.command_keys AS k (ordering_key, command_id, worker, lease_until)
    SELECT DISTINCT ON (r.ordering_key)
        r.ordering_key, r.id, %(worker)b,
        clock_timestamp() + make_interval(secs => %(lease)b::float8)
    FROM ready r WHERE r.ordering_key IS NOT NULL ORDER BY r.ordering_key, r.id
    ON CONFLICT (ordering_key) DO NOTHING
    RETURNING k.command_id
),
taken AS (
    SELECT r.id, r.priority, r.run_at FROM ready r
    WHERE r.ordering_key IS NULL OR r.id IN (SELECT command_id FROM keyed)
),
first AS (SELECT id FROM taken ORDER BY priority DESC, run_at, id LIMIT 1)
UPDATE {schema}.commands t SET
    status = 'running',
    attempts = t.attempts + (t.id = first.id)::integer,
    lease_token = gen_random_uuid(),
    lease_until = clock_timestamp() + make_interval(secs => %(lease)b::float8),
    worker = %(worker)b, started_at = clock_timestamp(), updated_at = clock_timestamp()
FROM taken, first
WHERE t.id = taken.id
RETURNING t.id, t.queue, t.command_type, t.payload::text,
    t.attempts + (t.id <> first.id)::integer, t.max_attempts, t.lease_token,
    t.correlation_id, t.causation_id, t.enqueued_at, t.ordering_key,
    t.priority, t.run_at, t.id = first.id, t.trace_context

-- name: claim
-- Lease ready commands of several queues and these types, best priority first, then oldest.
WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS v),
ready AS (
    SELECT c.id, c.ordering_key, c.priority, c.run_at
    FROM {schema}.commands c, cfg
    WHERE c.status = 'pending' AND c.queue = ANY(%(queues)b::text[])
    -- include: claimable
),
-- include: lease_ready

-- name: claim_one_queue
-- `claim` for one queue (the usual case): rows come in the index's order, none sorted.
WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS v),
ready AS (
    SELECT c.id, c.ordering_key, c.priority, c.run_at
    FROM {schema}.commands c, cfg
    WHERE c.status = 'pending' AND c.queue = %(queue)b::text
    -- include: claimable
),
-- include: lease_ready

-- fragment: free_keys
-- The end of ack, ack_one and release, after done (the commands ended, with their ordering
-- keys): free the keys they hold; their ids.
freed AS (
    DELETE FROM {schema}.command_keys k USING done
    WHERE k.ordering_key = done.ordering_key AND k.command_id = done.id
)
SELECT id FROM done

-- name: ack
-- Delete finished commands whose lease tokens still match, freeing their keys; their ids.
WITH done AS (
    DELETE FROM {schema}.commands c
    USING unnest(%(ids)b::bigint[], %(tokens)b::uuid[]) AS u(id, token)
    WHERE c.id = u.id AND c.lease_token = u.token AND c.status = 'running'
    RETURNING c.id, c.ordering_key
),
-- include: free_keys

-- name: ack_one
-- The ack of one command inside its handler's ctx.tx, just before that transaction commits.
WITH done AS (
    DELETE FROM {schema}.commands
    WHERE id = %(id)s AND lease_token = %(token)s AND status = 'running'
    RETURNING id, ordering_key
),
-- include: free_keys

-- name: extend
-- Heartbeat: extend held leases and count started attempts, skipping rows a ctx.tx locks.
WITH held AS (
    SELECT c.id FROM {schema}.commands c
    JOIN unnest(%(ids)b::bigint[], %(tokens)b::uuid[]) AS u(id, token)
        ON c.id = u.id AND c.lease_token = u.token AND c.status = 'running'
    FOR UPDATE OF c SKIP LOCKED
)
UPDATE {schema}.commands c SET
    lease_until = clock_timestamp() + make_interval(secs => %(lease)b::float8),
    attempts = greatest(c.attempts, u.attempt)
FROM unnest(%(ids)b::bigint[], %(attempts)b::integer[]) AS u(id, attempt)
WHERE c.id = u.id AND c.id IN (SELECT id FROM held)
RETURNING c.id

-- name: extend_keys
-- Heartbeat: extend the keys this worker holds (timed-out handlers' too), skipping locked rows.
UPDATE {schema}.command_keys k
SET lease_until = clock_timestamp() + make_interval(secs => %(lease)b::float8)
WHERE (k.ordering_key, k.command_id) IN (
    SELECT x.ordering_key, x.command_id
    FROM {schema}.command_keys x
    JOIN unnest(%(keys)b::text[], %(ids)b::bigint[]) AS u(key, id)
        ON x.ordering_key = u.key AND x.command_id = u.id
    FOR UPDATE OF x SKIP LOCKED
)
RETURNING k.ordering_key

-- name: release_key
-- Free a key given up by its command, once a timed-out handler's thread has returned.
DELETE FROM {schema}.command_keys WHERE ordering_key = %(key)s AND command_id = %(id)s

-- name: release
-- Hand back commands whose handlers never started, at the attempt count they had before.
WITH done AS (
    UPDATE {schema}.commands c SET
        status = 'pending',
        attempts = least(c.attempts, a.attempt),
        lease_token = NULL, lease_until = NULL, worker = NULL,
        updated_at = clock_timestamp()
    FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[], %(attempts)b::integer[])
        AS a(id, token, attempt)
    WHERE c.id = a.id AND c.lease_token = a.token AND c.status = 'running'
    RETURNING c.id, c.ordering_key
),
-- include: free_keys

-- name: fail
-- A failed attempt: retry after a delay or dead when out of attempts; key freed unless kept.
WITH done AS (
    UPDATE {schema}.commands SET
        status = CASE WHEN %(attempt)s >= max_attempts THEN 'dead' ELSE 'pending' END,
        attempts = %(attempt)s,
        run_at = clock_timestamp() + make_interval(secs => %(delay)s::float8),
        lease_token = NULL, lease_until = NULL, worker = NULL,
        last_error = %(error)s, error_traceback = %(traceback)s,
        updated_at = clock_timestamp()
    WHERE id = %(id)s AND lease_token = %(token)s AND status = 'running'
    RETURNING id, ordering_key, status, attempts
),
freed AS (
    DELETE FROM {schema}.command_keys k USING done
    WHERE NOT %(keep_key)s AND k.ordering_key = done.ordering_key
        AND k.command_id = done.id
)
SELECT status, attempts FROM done

-- name: reap
-- Expired leases (a worker died or stalled): free their keys, commands pending or dead.
WITH keys AS (
    DELETE FROM {schema}.command_keys k WHERE k.ordering_key IN (
        SELECT ordering_key FROM {schema}.command_keys
        WHERE lease_until < clock_timestamp()
        FOR UPDATE SKIP LOCKED
    )
),
reaped AS (
    UPDATE {schema}.commands t SET
        status = CASE WHEN t.attempts >= t.max_attempts THEN 'dead' ELSE 'pending' END,
        last_error = 'the lease of worker ' || coalesce(t.worker, '?')
            || ' expired (the worker died, stalled or lost the database) during attempt '
            || t.attempts,
        lease_token = NULL, lease_until = NULL, worker = NULL, run_at = clock_timestamp(),
        updated_at = clock_timestamp()
    FROM (
        SELECT id FROM {schema}.commands
        WHERE status = 'running' AND lease_until < clock_timestamp()
        FOR UPDATE SKIP LOCKED
    ) AS x
    WHERE t.id = x.id
    RETURNING t.id, t.status, t.command_type
)
SELECT id, status, command_type FROM reaped

-- name: unhandled
-- Mark once the ready commands of these queues whose types no handler here runs.
UPDATE {schema}.commands
SET last_error = 'no handler for command type ' || command_type
        || ' in worker ' || %(worker)s::text,
    updated_at = now()
WHERE status = 'pending' AND queue = ANY(%(queues)b::text[]) AND run_at <= now()
    AND NOT (command_type = ANY(%(types)b::text[])) AND last_error IS NULL
RETURNING id, command_type

-- name: remaining
-- How many commands of these queues and types are pending or running.
SELECT count(*) FROM {schema}.commands
WHERE status IN ('pending', 'running')
    AND queue = ANY(%(queues)b::text[]) AND command_type = ANY(%(types)b::text[])

-- fragment: command_info
-- Commands as CommandInfo rows: its fields, in their order.
SELECT id, queue, command_type, status, priority, attempts, max_attempts, run_at, lease_until,
    worker, dedupe_key, ordering_key, correlation_id, last_error, error_traceback,
    enqueued_at, updated_at, payload::text
FROM {schema}.commands

-- name: list
-- Commands in some states (of one queue, or all), oldest first, as CommandInfo rows.
-- include: command_info
WHERE status = ANY(%(statuses)s::text[])
    AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
ORDER BY id
LIMIT %(limit)s

-- name: get
-- One command by id, as a CommandInfo row.
-- include: command_info
WHERE id = %(id)s

-- name: retry
-- Give a dead command more attempts, due now; its queue.
UPDATE {schema}.commands
SET status = 'pending', run_at = now(), max_attempts = attempts + %(attempts)s,
    updated_at = now()
WHERE id = %(id)s AND status = 'dead'
RETURNING queue

-- name: purge
-- Delete dead commands (of one queue, or all) last updated before a given age; their ids.
DELETE FROM {schema}.commands
WHERE status = 'dead'
    AND updated_at < now() - make_interval(secs => %(older_than)s::float8)
    AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
RETURNING id

-- name: counts
-- Commands per queue and state, with the oldest enqueue time.
SELECT queue, status, count(*), min(enqueued_at) FROM {schema}.commands
GROUP BY queue, status
ORDER BY queue, status

-- name: idle_timeout
-- Let a handler's ctx.tx sit idle at most this long (ms) before the server ends the session.
SELECT set_config('idle_in_transaction_session_timeout', %(ms)s, true)
