"""The prediction log: its table format and its spool (all that serve and monitor share)."""
