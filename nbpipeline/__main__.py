"""`python -m nbpipeline` is `nbp`."""

from nbpipeline.cli import entry

entry()
