"""Loaded by every Python process the suite starts (tests/support is first on PYTHONPATH)."""

import os

import lean_imports

lean_imports.install()

if os.environ.get("TUNELAB_TEST_PROCESS_LOG"):
    import process_log

    process_log.install()

if os.environ.get("TUNELAB_TEST_MLFLOW_TEMPLATE"):
    import mlflow_template

    mlflow_template.install()

if os.environ.get("TUNELAB_TEST_FIXED_SPEEDS"):
    import fixed_speeds

    fixed_speeds.install()

if os.environ.get("TUNELAB_TEST_SHORT_REFITS"):
    import short_refits

    short_refits.install()
