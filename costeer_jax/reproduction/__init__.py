"""The papers' tables as runnable specifications (tables.py) and the harness that runs,
evaluates and formats them beside the papers' numbers (harness.py)."""
