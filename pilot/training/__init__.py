"""Operator training on the twin: sessions (journal-replay snapshots), scenarios, scoring, reports.

See docs/training.md.
"""
