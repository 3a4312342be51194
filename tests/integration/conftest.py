"""Fixtures of this layer: NATS JetStream for the relay's tests (see tests/nats_support.py),
and the in-memory OpenTelemetry SDK (``otel``, see _telemetry_support.py)."""

from tests.integration._telemetry_support import otel
from tests.nats_support import nats_url, private_nats, target

__all__ = ["nats_url", "otel", "private_nats", "target"]
