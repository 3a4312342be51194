"""Runnable domain services built on eventsource, used as a user would use the framework."""
