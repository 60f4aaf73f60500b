"""Scheduled monitoring: ``nbp schedule`` runs the monitor (and its retrain) on a timer.

Modules: runs (the runs record ``logs/schedule/runs.jsonl`` and its health: failed or
missed runs, read by the monitor and the report), entry (the cron line and the systemd
user timer, printed or installed), tick (one locked, logged run of ``nbp monitor``, and a
foreground runner for machines without cron), status (their health as the ``schedule``
section of the model server's ``GET /health``). See docs/schedule.md.
"""
