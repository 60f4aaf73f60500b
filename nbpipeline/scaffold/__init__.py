"""`nbp init`: new projects from a table, with the generic stage notebooks as templates."""
