"""Shared set-up of pytest-ipc's own test suite.

The suite tests the plugin through pytester: each test writes a small test
file and runs a real pytest session on it, in a subprocess wherever worker
processes, signals or timeouts are involved.
"""

pytest_plugins = ["pytester"]
