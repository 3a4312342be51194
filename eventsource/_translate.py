"""Kept while the layout settles: the translation of driver errors lives in ``_errors``."""

from __future__ import annotations

from eventsource._errors import first_line, is_outage, translate, translate_errors

__all__ = ["first_line", "is_outage", "translate", "translate_errors"]
