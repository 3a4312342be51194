-- The projection runtime's statements: checkpoints, leases and replay state of the
-- projections in one schema (see eventsource/db/_sql.py for the format). Its workers'
-- membership of a projection's group is kept by the worker runtime's statements
-- (eventsource/runtime/membership.sql).
--
-- Names of projections and workers are always parameters, never SQL text. Lease times come
-- from the database clock at the moment of the statement (clock_timestamp()), never from the
-- start of a transaction nor from the worker's clock. A claim bumps a checkpoint's lease
-- token; a batch commits only while the token is its own.

-- name: register
-- Register a projection (its replay state), once.
INSERT INTO {schema}.projection_state (projection)
VALUES (%(projection)s)
ON CONFLICT (projection) DO NOTHING

-- name: init_checkpoints
-- Create a projection's missing checkpoints, at the start of the log.
INSERT INTO {schema}.projection_checkpoints (projection, partition)
SELECT %(projection)s, p.partition FROM {schema}.partitions p
ON CONFLICT (projection, partition) DO NOTHING

-- name: init_checkpoints_at_head
-- Create a reactor's missing checkpoints at each partition's head, skipping the history.
INSERT INTO {schema}.projection_checkpoints (projection, partition, position)
SELECT %(projection)s, p.partition, p.head FROM {schema}.partitions p
ON CONFLICT (projection, partition) DO NOTHING

-- name: setup_lock
-- Serialize the setup of one projection among the workers starting together.
SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))

-- name: paused
-- The worker (a replay) holding a projection paused, if any.
SELECT paused_by FROM {schema}.projection_state
WHERE projection = %(projection)s AND paused_until > clock_timestamp()

-- name: pause
-- Pause a projection for this worker for one TTL, unless another holds it; a row if paused.
UPDATE {schema}.projection_state
SET paused_by = %(worker)s,
    paused_until = clock_timestamp() + make_interval(secs => %(ttl)s)
WHERE projection = %(projection)s
  AND (paused_by IS NULL OR paused_by = %(worker)s OR paused_until < clock_timestamp())
RETURNING projection

-- name: unpause
-- Lift this worker's pause of a projection, noting when it was replayed.
UPDATE {schema}.projection_state
SET paused_by = NULL,
    paused_until = NULL,
    replayed_at = CASE WHEN %(replayed)s THEN clock_timestamp() ELSE replayed_at END
WHERE projection = %(projection)s AND paused_by = %(worker)s

-- fragment: locked_checkpoint
-- A batch's checkpoint, locked while its lease is ours (NOWAIT), with TTL timeouts for the batch.
SELECT c.position
FROM {schema}.projection_checkpoints c,
     (SELECT set_config('statement_timeout', %(ms)s, true),
             set_config('idle_in_transaction_session_timeout', %(ms)s, true)) AS t
WHERE c.projection = %(projection)s AND c.partition = %(partition)s
  AND c.owner = %(worker)s AND c.lease_token = %(token)s AND c.error IS NULL
FOR UPDATE OF c NOWAIT

-- name: lock_checkpoint
-- Lock a batch's checkpoint while its lease is ours (NOWAIT), with TTL timeouts for the batch.
-- include: locked_checkpoint

-- name: lock_read
-- lock_checkpoint and the partition's next events after it, in one statement: one row per
-- event (position order) after the checkpoint's position, or a row of NULLs when there is
-- none; no row when the checkpoint is not ours.
WITH c AS (
    -- include: locked_checkpoint
)
SELECT c.position, e.event_id::text, e.stream_id, e.stream_version, e.partition, e.position,
    e.event_type, e.schema_version, e.data::text, e.metadata::text, e.recorded_at
FROM c LEFT JOIN LATERAL (
    SELECT * FROM {schema}.events
    WHERE partition = %(partition)s AND position > c.position
    ORDER BY position LIMIT %(limit)s
) e ON true
ORDER BY e.position

-- name: advance
-- Move a batch's checkpoint to its last event and renew its lease, while the lease is ours.
UPDATE {schema}.projection_checkpoints
SET position = %(position)s,
    updated_at = clock_timestamp(),
    error_attempts = 0,
    lease_until = clock_timestamp() + make_interval(secs => %(ttl)s)
WHERE projection = %(projection)s AND partition = %(partition)s
  AND owner = %(worker)s AND lease_token = %(token)s

-- name: record_error
-- Stop a partition on its poison event, with the error, while the lease is ours.
UPDATE {schema}.projection_checkpoints
SET error = %(error)s,
    error_position = %(error_position)s,
    error_attempts = %(attempts)s,
    error_at = clock_timestamp(),
    updated_at = clock_timestamp()
WHERE projection = %(projection)s AND partition = %(partition)s
  AND owner = %(worker)s AND lease_token = %(token)s

-- name: retry
-- Clear a stopped partition's error so that its event is tried again; its position.
UPDATE {schema}.projection_checkpoints
SET error = NULL, error_position = NULL, error_attempts = 0, error_at = NULL,
    updated_at = clock_timestamp()
WHERE projection = %(projection)s AND partition = %(partition)s AND error IS NOT NULL
RETURNING position

-- name: skip
-- Move a stopped partition past its poison event, logged in projection_skips; where and what.
WITH c AS (
    UPDATE {schema}.projection_checkpoints
    SET position = error_position,
        error = NULL, error_position = NULL, error_attempts = 0, error_at = NULL,
        updated_at = clock_timestamp()
    WHERE projection = %(projection)s AND partition = %(partition)s AND error IS NOT NULL
    RETURNING projection, partition, position,
        (SELECT error FROM {schema}.projection_checkpoints
         WHERE projection = %(projection)s AND partition = %(partition)s) AS error
)
INSERT INTO {schema}.projection_skips
    (projection, partition, position, event_id, event_type, error)
SELECT c.projection, c.partition, c.position, e.event_id, e.event_type, c.error
FROM c LEFT JOIN {schema}.events e ON e.partition = c.partition AND e.position = c.position
RETURNING position, event_type

-- name: reset_checkpoints
-- Set this worker's checkpoints of a projection back to the start, without errors (replay).
UPDATE {schema}.projection_checkpoints
SET position = 0, error = NULL, error_position = NULL, error_attempts = 0, error_at = NULL,
    updated_at = clock_timestamp()
WHERE projection = %(projection)s AND owner = %(worker)s

-- name: lock_all
-- Lock this worker's checkpoints of a projection, in partition order (replay).
SELECT partition FROM {schema}.projection_checkpoints
WHERE projection = %(projection)s AND owner = %(worker)s
ORDER BY partition
FOR UPDATE

-- name: position
-- A projection's checkpoint in one partition.
SELECT position FROM {schema}.projection_checkpoints
WHERE projection = %(projection)s AND partition = %(partition)s

-- name: status
-- Every projection's checkpoints with their partitions' heads and replay pauses.
SELECT c.projection, c.partition, c.position, p.head, c.owner, c.lease_until,
       c.updated_at, c.error, c.error_position, c.error_attempts, c.error_at,
       st.paused_by
FROM {schema}.projection_checkpoints c
JOIN {schema}.partitions p ON p.partition = c.partition
LEFT JOIN {schema}.projection_state st
  ON st.projection = c.projection AND st.paused_until > clock_timestamp()
ORDER BY c.projection, c.partition
