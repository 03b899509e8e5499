"""pvtwin's pure core: Pantavisor's revision format and update logic, with no I/O.

Nothing in this package touches files, sockets, clocks or randomness; the import-linter contract in
pyproject.toml (checked by tests/test_architecture.py) keeps it that way.
"""
