-- The statements that create and upgrade a schema around its Alembic migrations, loaded by
-- eventsource/db/_migrate.py (see eventsource/db/_sql.py for the format). They run on the
-- migration's SQLAlchemy connection with psycopg's named placeholders.

-- name: migrate_lock
-- Wait for, then hold to the end of the transaction, the advisory lock of a schema's migrations.
SELECT pg_advisory_xact_lock(%(key)s)

-- name: create_schema
-- Create the schema if it does not exist.
CREATE SCHEMA IF NOT EXISTS {schema}

-- name: partition_count
-- The stored partition count.
SELECT value FROM {schema}.meta WHERE key = 'partitions'

-- name: init_partitions
-- Store the partition count n on first creation (a schema keeps the count it was created
-- with), give every partition its row (its head; those that exist are left alone) and return
-- the stored count. The SELECTs do not see the CTE's insert: one of the two has the row.
WITH created AS (
    INSERT INTO {schema}.meta (key, value) VALUES ('partitions', %(n)s)
    ON CONFLICT (key) DO NOTHING
    RETURNING value
), stored AS (
    SELECT value::integer AS n FROM created
    UNION ALL
    SELECT value::integer FROM {schema}.meta WHERE key = 'partitions'
), heads AS (
    INSERT INTO {schema}.partitions (partition)
    SELECT generate_series(0, (SELECT n FROM stored) - 1)
    ON CONFLICT (partition) DO NOTHING
)
SELECT n FROM stored

-- name: constraint_not_valid
-- Whether a constraint of the schema was added NOT VALID and is not validated yet.
SELECT NOT c.convalidated FROM pg_constraint c
JOIN pg_namespace n ON n.oid = c.connamespace
WHERE n.nspname = %(schema)s AND c.conname = %(name)s

-- name: validate_events_stream_id_length
-- Check the stored events against the stream id length constraint (appends go on meanwhile).
ALTER TABLE {schema}.events VALIDATE CONSTRAINT events_stream_id_length
