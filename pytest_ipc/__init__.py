"""pytest-ipc: fixtures and a race marker for Python ``multiprocessing`` code.

The names below are imported lazily: worker processes import this package
(under spawn and forkserver) and must not pay for importing pytest.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# When pytest registers this package itself as the plugin (older pytest,
# `pytest_plugins = ["pytest_ipc"]` with plugin autoload disabled, does not
# look the name up among entry points), this brings in the real plugin module.
pytest_plugins = ["pytest_ipc.plugin"]

# Every name the documentation calls pytest_ipc.X (tests/test_layout.py
# walks the docs and checks each is here, importable and picklable).
_EXPORTS = {
    "ForkWarning": "pytest_ipc.errors",
    "LeakError": "pytest_ipc.errors",
    "LeakWarning": "pytest_ipc.errors",
    "RaceDetected": "pytest_ipc.errors",
    "RunsFailed": "pytest_ipc.errors",
    "Terminated": "pytest_ipc.errors",
    "UnexpectedOutcome": "pytest_ipc.errors",
    "WorkerError": "pytest_ipc.errors",
    "WorkerFailed": "pytest_ipc.errors",
    "WorkerStartError": "pytest_ipc.errors",
    "WorkerTimeout": "pytest_ipc.errors",
    "DONE": "pytest_ipc._worker.queues",
    "FanInQueue": "pytest_ipc._worker.queues",
    "FanInTimeout": "pytest_ipc._worker.queues",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_ipc' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
