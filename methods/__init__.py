"""Method plugins: one file per method, each defining ``class Method``.

Files whose name starts with ``_`` hold shared network blocks and are never discovered as methods.
See ``methods/_template.py`` for the contract and ``benchmark.methods`` for discovery.
"""
