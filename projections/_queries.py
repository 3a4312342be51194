"""Every SQL statement of the projection runtime, built once per schema.

Statements run on psycopg connections with %(name)s placeholders; names of projections and
workers are always parameters, never SQL text. Lease times come from the database clock at
the moment of the statement (``clock_timestamp()``), never from the start of a transaction
nor from the worker's clock.
"""

from __future__ import annotations

from eventsource._internal import Queries as StoreQueries

__all__ = ["ProjectionQueries"]


class ProjectionQueries:
    """Checkpoints, leases, membership and replay state of the projections in one schema."""

    def __init__(self, store_queries: StoreQueries, quoted: str) -> None:
        s = quoted
        self.store = store_queries
        self.register = (
            f"INSERT INTO {s}.projection_state (projection) VALUES (%(projection)s)"
            " ON CONFLICT (projection) DO NOTHING"
        )
        self.init_checkpoints = (
            f"INSERT INTO {s}.projection_checkpoints (projection, partition)"
            " SELECT %(projection)s, p.partition FROM "
            f"{s}.partitions p ON CONFLICT (projection, partition) DO NOTHING"
        )
        # A reactor that starts at the head: its first checkpoints skip the history.
        self.init_checkpoints_at_head = (
            f"INSERT INTO {s}.projection_checkpoints (projection, partition, position)"
            " SELECT %(projection)s, p.partition, p.head FROM "
            f"{s}.partitions p ON CONFLICT (projection, partition) DO NOTHING"
        )
        self.heartbeat = (
            f"INSERT INTO {s}.projection_workers AS w (projection, worker_id)"
            " VALUES (%(projection)s, %(worker)s)"
            " ON CONFLICT (projection, worker_id) DO UPDATE SET heartbeat_at = clock_timestamp()"
        )
        self.live_workers = (
            f"SELECT worker_id FROM {s}.projection_workers WHERE projection = %(projection)s"
            " AND heartbeat_at > clock_timestamp() - make_interval(secs => %(ttl)s)"
            " ORDER BY worker_id"
        )
        self.leave = (
            f"DELETE FROM {s}.projection_workers"
            " WHERE projection = %(projection)s AND worker_id = %(worker)s"
        )
        self.forget_dead = (
            f"DELETE FROM {s}.projection_workers WHERE projection = %(projection)s"
            " AND heartbeat_at < clock_timestamp() - make_interval(secs => %(ttl)s * 10)"
        )
        self.paused = (
            f"SELECT paused_by FROM {s}.projection_state WHERE projection = %(projection)s"
            " AND paused_until > clock_timestamp()"
        )
        self.pause = (
            f"UPDATE {s}.projection_state SET paused_by = %(worker)s,"
            " paused_until = clock_timestamp() + make_interval(secs => %(ttl)s)"
            " WHERE projection = %(projection)s"
            " AND (paused_by IS NULL OR paused_by = %(worker)s OR paused_until < clock_timestamp())"
            " RETURNING projection"
        )
        self.unpause = (
            f"UPDATE {s}.projection_state SET paused_by = NULL, paused_until = NULL,"
            " replayed_at = CASE WHEN %(replayed)s THEN clock_timestamp() ELSE replayed_at END"
            " WHERE projection = %(projection)s AND paused_by = %(worker)s"
        )
        # Leases. A claim bumps the token; a batch commits only while the token is its own.
        self.claim = (
            f"UPDATE {s}.projection_checkpoints c SET owner = %(worker)s,"
            " lease_token = c.lease_token + 1,"
            " lease_until = clock_timestamp() + make_interval(secs => %(ttl)s)"
            f" WHERE (c.projection, c.partition) IN (SELECT projection, partition"
            f"   FROM {s}.projection_checkpoints WHERE projection = %(projection)s"
            "   AND partition = ANY(%(partitions)s)"
            "   AND (owner IS NULL OR owner = %(worker)s OR lease_until < clock_timestamp())"
            "   FOR UPDATE SKIP LOCKED)"
            " RETURNING c.partition, c.lease_token, c.position, c.error IS NOT NULL"
        )
        self.renew = (
            f"UPDATE {s}.projection_checkpoints c"
            " SET lease_until = clock_timestamp() + make_interval(secs => %(ttl)s)"
            " FROM unnest(%(partitions)s::integer[], %(tokens)s::bigint[]) AS t(partition, token)"
            " WHERE c.projection = %(projection)s AND c.partition = t.partition"
            " AND c.owner = %(worker)s AND c.lease_token = t.token"
            " RETURNING c.partition, c.position, c.error IS NOT NULL"
        )
        self.release = (
            f"UPDATE {s}.projection_checkpoints SET owner = NULL, lease_until = NULL"
            " WHERE projection = %(projection)s AND owner = %(worker)s"
            " AND partition = ANY(%(partitions)s)"
        )
        # One batch: lock the checkpoint (fenced by the lease token), apply, move it.
        # The batch's timeouts are set in the same round trip (``ms``: the lease TTL), so
        # that a frozen worker's session ends within about one TTL; NOWAIT: a checkpoint
        # that another session holds locked is not this worker's to process.
        self.lock_checkpoint = (
            f"SELECT c.position FROM {s}.projection_checkpoints c,"
            " (SELECT set_config('statement_timeout', %(ms)s, true),"
            "  set_config('idle_in_transaction_session_timeout', %(ms)s, true)) AS t"
            " WHERE c.projection = %(projection)s AND c.partition = %(partition)s"
            " AND c.owner = %(worker)s AND c.lease_token = %(token)s AND c.error IS NULL"
            " FOR UPDATE OF c NOWAIT"
        )
        self.advance = (
            f"UPDATE {s}.projection_checkpoints SET position = %(position)s,"
            " updated_at = clock_timestamp(), error_attempts = 0,"
            " lease_until = clock_timestamp() + make_interval(secs => %(ttl)s)"
            " WHERE projection = %(projection)s AND partition = %(partition)s"
            " AND owner = %(worker)s AND lease_token = %(token)s"
        )
        self.record_error = (
            f"UPDATE {s}.projection_checkpoints SET error = %(error)s,"
            " error_position = %(error_position)s, error_attempts = %(attempts)s,"
            " error_at = clock_timestamp(), updated_at = clock_timestamp()"
            " WHERE projection = %(projection)s AND partition = %(partition)s"
            " AND owner = %(worker)s AND lease_token = %(token)s"
        )
        self.retry = (
            f"UPDATE {s}.projection_checkpoints SET error = NULL, error_position = NULL,"
            " error_attempts = 0, error_at = NULL, updated_at = clock_timestamp()"
            " WHERE projection = %(projection)s AND partition = %(partition)s"
            " AND error IS NOT NULL RETURNING position"
        )
        self.skip = (
            f"WITH c AS (UPDATE {s}.projection_checkpoints SET position = error_position,"
            " error = NULL, error_position = NULL, error_attempts = 0, error_at = NULL,"
            " updated_at = clock_timestamp()"
            " WHERE projection = %(projection)s AND partition = %(partition)s"
            " AND error IS NOT NULL"
            " RETURNING projection, partition, position,"
            f"   (SELECT error FROM {s}.projection_checkpoints"
            "     WHERE projection = %(projection)s AND partition = %(partition)s) AS error)"
            f" INSERT INTO {s}.projection_skips (projection, partition, position, event_id,"
            " event_type, error)"
            " SELECT c.projection, c.partition, c.position, e.event_id, e.event_type, c.error"
            f" FROM c LEFT JOIN {s}.events e ON e.partition = c.partition"
            " AND e.position = c.position RETURNING position, event_type"
        )
        self.reset_checkpoints = (
            f"UPDATE {s}.projection_checkpoints SET position = 0, error = NULL,"
            " error_position = NULL, error_attempts = 0, error_at = NULL,"
            " updated_at = clock_timestamp()"
            " WHERE projection = %(projection)s AND owner = %(worker)s"
        )
        self.lock_all = (
            f"SELECT partition FROM {s}.projection_checkpoints"
            " WHERE projection = %(projection)s AND owner = %(worker)s ORDER BY partition"
            " FOR UPDATE"
        )
        self.position = (
            f"SELECT position FROM {s}.projection_checkpoints"
            " WHERE projection = %(projection)s AND partition = %(partition)s"
        )
        self.status = (
            "SELECT c.projection, c.partition, c.position, p.head, c.owner, c.lease_until,"
            " c.updated_at, c.error, c.error_position, c.error_attempts, c.error_at,"
            " st.paused_by"
            f" FROM {s}.projection_checkpoints c"
            f" JOIN {s}.partitions p ON p.partition = c.partition"
            f" LEFT JOIN {s}.projection_state st ON st.projection = c.projection"
            "  AND st.paused_until > clock_timestamp()"
            " ORDER BY c.projection, c.partition"
        )
