"""Fixtures of this layer: NATS JetStream for the relay's tests (see tests/nats_support.py)."""

from tests.nats_support import nats_url, private_nats, target

__all__ = ["nats_url", "private_nats", "target"]
