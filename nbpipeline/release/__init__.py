"""From candidate to production: the gate, the registry, promote/rollback, lineage."""
