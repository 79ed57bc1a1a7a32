"""Chot: the shared core of the checkpoint terminals and the collector.

This package holds what every part uses: the version, the exception base class, the
command line (`chot`), and the wire contract (`chot.wire`) that the terminal and the
collector both import.
"""

__version__ = "0.1.0"
