-- The operations page's statements (loaded by eventsource/ops/_queries.py; the format is
-- described in eventsource/db/_sql.py). What the framework already reads elsewhere (the
-- projections' status, the queue's counts and dead letters, a stream's or a partition's events)
-- comes from those parts; these are the figures only the page and /metrics need.
--
-- Each one is cheap on a large store: none scans the event log. Events are only ever looked up
-- by their primary key (partition, position), one row per partition or checkpoint, inside a
-- LATERAL subquery with LIMIT 1 so that the planner keeps the lookup and never turns it into a
-- join over the whole log. Command figures take one pass over the commands table.

-- name: heads
-- Every partition's head with the time its last event was recorded.
SELECT p.partition, p.head, e.recorded_at
FROM {schema}.partitions p
LEFT JOIN LATERAL (
    SELECT recorded_at FROM {schema}.events
    WHERE partition = p.partition AND position = p.head
    LIMIT 1
) e ON true
ORDER BY p.partition

-- name: append_rate
-- Events appended per second: per partition, its last %(window)s events over the time from the
-- first of them to now (so that the rate falls while nothing is appended), summed.
SELECT coalesce(sum((p.head - e.position)::float8
        / greatest(extract(epoch FROM now() - e.recorded_at)::float8, 1.0)), 0)
FROM {schema}.partitions p
CROSS JOIN LATERAL (
    SELECT position, recorded_at FROM {schema}.events
    WHERE partition = p.partition AND position = greatest(p.head - %(window)s, 1)
    LIMIT 1
) e
WHERE p.head > 0

-- name: lag_seconds
-- Per projection and partition that lags: how long ago its first unapplied event was recorded.
SELECT c.projection, c.partition,
       greatest(extract(epoch FROM now() - e.recorded_at)::float8, 0.0)
FROM {schema}.projection_checkpoints c
JOIN {schema}.partitions p ON p.partition = c.partition AND p.head > c.position
CROSS JOIN LATERAL (
    SELECT recorded_at FROM {schema}.events
    WHERE partition = c.partition AND position = c.position + 1
    LIMIT 1
) e

-- name: live_workers
-- The projection workers that heartbeat within %(ttl)s seconds, per projection.
SELECT projection, count(*) FROM {schema}.projection_workers
WHERE heartbeat_at > now() - make_interval(secs => %(ttl)s)
GROUP BY projection
ORDER BY projection

-- name: busy_command_workers
-- The command workers holding a live lease on a running command (the reaper's partial index).
SELECT count(DISTINCT worker) FROM {schema}.commands
WHERE status = 'running' AND lease_until > now()

-- name: command_figures
-- Per queue and state: how many commands, and for the pending ones how long the oldest due one
-- has waited since it was due, in seconds (delayed commands not due yet do not count). One
-- pass over the table: the queue's own counts (CommandQueue.counts) would take a second one
-- for the age.
SELECT queue, status, count(*),
    greatest(extract(epoch FROM now()
        - min(run_at) FILTER (WHERE status = 'pending' AND run_at <= now()))::float8, 0.0)
FROM {schema}.commands
GROUP BY queue, status
ORDER BY queue, status

-- name: read_stream_page
-- Up to a limit of one stream's events after a version, in version order, raw (the page shows
-- the stored JSON; it may not have the event classes to decode them into models).
SELECT event_id::text, stream_id, stream_version, partition, position, event_type,
    schema_version, data::text, metadata::text, recorded_at
FROM {schema}.events
WHERE stream_id = %(stream_id)s AND stream_version > %(after)s
ORDER BY stream_version
LIMIT %(limit)s
