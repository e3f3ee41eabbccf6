"""Helpers the suite loads into the processes it starts (see sitecustomize.py)."""
