"""A shop's cart service: an async FastAPI application on the framework.

- ``domain``: the cart's events and the ``Cart`` aggregate (no database, no web).
- ``views``: ``CartView``, the projection behind ``GET /carts/{id}``, and its async query.
- ``payments``: the ``ChargePayment`` command, enqueued in the checkout's transaction, its
  handler, and the ``Confirmations`` reactor that enqueues ``SendConfirmation`` once a
  payment is captured.
- ``app``: the HTTP API (``create_app``), with read-your-writes through the
  ``X-Position-Token`` header.

Run it with ``python -m examples.shop`` (see ``examples/shop/README.md``).
"""
