"""Engines: one adapter per search library, over the same search spaces and training function."""
