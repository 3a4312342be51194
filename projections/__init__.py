"""Projections: read models built from partition offsets (see the projections issue)."""
