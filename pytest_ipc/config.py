"""Reading and validating every knob: command-line options, ini keys and markers.

Each parser takes the raw value and a description of where it came from, and
raises :class:`SettingError`, which the plugin turns into a
:class:`pytest.UsageError` (options, ini) or a collection error (markers)
that names both.  The session's :class:`Settings` are read once, in
``pytest_configure``; an ``ipc_race`` test's marker is resolved once per
item into its :class:`RacePlan` (:func:`race_plan`).  Nothing here starts
processes or imports ``multiprocessing``.
"""

from __future__ import annotations

import inspect
import math
import random
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

START_METHODS = ("fork", "spawn", "forkserver")

DEFAULT_TIMEOUT = 30.0
DEFAULT_RUNS = 20
DEFAULT_BUDGET = 10.0
DEFAULT_SHARDS = 1
# Each shard is a test item; more than this many per test is a typo, not a campaign.
MAX_SHARDS = 10_000

# Amplification levels: the probability that a worker yields at a preemption point.
JITTER_LEVELS = {"off": 0.0, "low": 0.05, "high": 0.25}
DEFAULT_JITTER = "low"

MAX_SEED = 2**32 - 1


class SettingError(ValueError):
    """A bad value; the message names the value and where it came from."""


class Settings(NamedTuple):
    """The session-wide settings, validated once in ``pytest_configure``."""

    start_method: str | None  # None: platform default; "all": every available method
    timeout: float
    runs: int
    budget: float | None
    seed: int
    jitter: float
    report_path: str | None
    shards: int = DEFAULT_SHARDS  # items each ipc_race test's runs are split into (for pytest-xdist)
    leak_check: str = "fail"  # off, warn or fail: what a leak found after a test does (leaks.py)
    all_runs: bool = False  # make every run of a racing ipc_race test, not stop once the race is proven
    job_shard: tuple[int, int] | None = None  # (i, k): this CI job makes runs i-1, i-1+k, ... of every test


settings_key = pytest.StashKey[Settings]()


def settings(config: pytest.Config) -> Settings:
    """The session's settings (read in ``pytest_configure``)."""
    return config.stash[settings_key]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def shorten(text: str, limit: int) -> str:
    """``text`` on one line of about ``limit`` characters: its middle cut out, control characters escaped.

    The end is kept as well as the start, so that two long values that differ
    only at the end (two tuples, two strings) still print differently.
    """
    if len(text) > limit:
        head = (limit - 3) * 2 // 3
        text = text[:head] + "..." + text[len(text) - (limit - 3 - head) :]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text


def safe_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for a message or a report: shortened by :func:`shorten`, and never an exception.

    A user's value can have a ``__repr__`` that raises or returns pages of
    text; an int too long for ``repr`` (Python 3.11's digit limit) is shown in hex.
    """
    try:
        text = repr(value)
    except Exception as exc:  # a raising __repr__ must not break the report
        if isinstance(value, int):
            text = hex(value)
        else:
            text = f"<unprintable {type(value).__name__}: {type(exc).__name__}>"
    return shorten(text, limit)


# Longer waits overflow the C timeouts under multiprocessing's waits (poll()
# takes milliseconds in a C int: about 24 days), which would surface as an
# OverflowError in the middle of a test; a week is more than any test needs.
MAX_SECONDS = 7 * 24 * 3600.0


def positive_seconds(value: Any, where: str, limit: float = MAX_SECONDS) -> float:
    # Messages quote the input as given, not the float it became.
    raw = value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise SettingError(f"{where}: expected a number of seconds, got {safe_repr(raw)}") from None
    # An int is compared as it is: math.isfinite(10**400) raises OverflowError.
    if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise SettingError(f"{where}: expected a positive number of seconds, got {safe_repr(raw)}")
    if value > limit:
        raise SettingError(f"{where}: {safe_repr(raw)} seconds is more than the limit of {limit:g}")
    return float(value)


def positive_int(value: Any, where: str, limit: int = 10**9) -> int:
    raw = value
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise SettingError(f"{where}: expected a positive whole number, got {safe_repr(raw)}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingError(f"{where}: expected a positive whole number, got {safe_repr(raw)}")
    if value > limit:
        raise SettingError(f"{where}: {safe_repr(raw)} is more than the limit of {limit}")
    return value


def seed_value(value: Any, where: str) -> int:
    raw = value
    expected = f"expected a whole number from 0 to {MAX_SEED}"
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise SettingError(f"{where}: {expected}, got {safe_repr(raw)}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise SettingError(f"{where}: {expected}, got {safe_repr(raw)}")
    return value


def start_method(value: Any, where: str, allow_all: bool = True) -> str:
    choices = START_METHODS + (("all",) if allow_all else ())
    if not isinstance(value, str) or value.strip() not in choices:
        raise SettingError(f"{where}: expected one of {', '.join(choices)}; got {safe_repr(value)}")
    return value.strip()


LEAK_CHECK_MODES = ("off", "warn", "fail")


def leak_check(value: Any, where: str) -> str:
    """``off``, ``warn`` or ``fail``."""
    text = value.strip().lower() if isinstance(value, str) else ""
    if text not in LEAK_CHECK_MODES:
        raise SettingError(f"{where}: expected one of {', '.join(LEAK_CHECK_MODES)}; got {safe_repr(value)}")
    return text


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def boolean(value: Any, where: str) -> bool:
    """``true``/``false`` (also yes/no, on/off, 1/0, or a TOML boolean)."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SettingError(f"{where}: expected true or false, got {safe_repr(value)}")


def job_shard(value: Any, where: str) -> tuple[int, int]:
    """``I/K``: this job's share, I of K jobs (1 <= I <= K)."""
    found = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", str(value))
    if found:
        index, count = int(found.group(1)), int(found.group(2))
        if 1 <= index <= count:
            return index, count
    raise SettingError(
        f"{where}: expected I/K, this job's share I of K jobs with 1 <= I <= K (e.g. 2/4), got {safe_repr(value)}"
    )


def jitter(value: Any, where: str) -> float:
    """``off``/``low``/``high`` or a probability in [0, 1]."""
    raw = value
    expected = "expected off, low, high or a probability from 0 to 1"
    if isinstance(value, str):
        text = value.strip().lower()
        if text in JITTER_LEVELS:
            return JITTER_LEVELS[text]
        try:
            value = float(text)
        except ValueError:
            raise SettingError(f"{where}: {expected}, got {safe_repr(raw)}") from None
    if not _is_number(value) or not 0 <= value <= 1:  # NaN fails the comparison
        raise SettingError(f"{where}: {expected}, got {safe_repr(raw)}")
    return float(value)


def jitter_name(value: float) -> str:
    """How a jitter prints: its level's name, else the probability."""
    for name, level in JITTER_LEVELS.items():
        if level == value:
            return name
    return f"{value:g}"


# The dests of pytest-ipc's command-line options (see plugin.pytest_addoption).
OPTION_DESTS = (
    "ipc_start_method",
    "ipc_timeout",
    "ipc_runs",
    "ipc_budget",
    "ipc_seed",
    "ipc_jitter",
    "ipc_report",
    "ipc_shards",
    "ipc_leak_check",
    "ipc_all_runs",
    "ipc_job_shard",
)


def options_given(config: pytest.Config) -> bool:
    """Whether any --ipc-* option is on the command line."""
    return any(config.getoption(dest) is not None for dest in OPTION_DESTS)


def _from(config: pytest.Config, option: str, ini: str) -> tuple[Any, str] | None:
    """The raw value of a setting and where it came from: the option, else the ini key."""
    value = config.getoption(option.lstrip("-").replace("-", "_"))
    if value is not None:
        return value, f"{option}={shorten(str(value), 80)}"
    raw = config.getini(ini)
    if raw not in (None, ""):
        source = config.inipath.name if config.inipath else "ini file"
        return raw, f"ini key {ini} = {safe_repr(raw)} in {source}"
    return None


def _read(config: pytest.Config, option: str, ini: str, parse: Callable[[Any, str], Any], default: Any) -> Any:
    found = _from(config, option, ini)
    if found is None:
        return default
    return parse(*found)


def from_config(config: pytest.Config) -> Settings:
    """Validate every option and ini key; raise :class:`pytest.UsageError` naming the bad one."""
    try:
        seed = _read(config, "--ipc-seed", "ipc_seed", seed_value, None)
        if seed is None:
            seed = random.SystemRandom().randint(0, 99_999)
        budget_found = _from(config, "--ipc-budget", "ipc_budget")
        budget: float | None = DEFAULT_BUDGET
        if budget_found is not None:
            raw, where = budget_found
            budget = None if str(raw).strip().lower() == "none" else positive_seconds(raw, where)
        return Settings(
            start_method=_read(config, "--ipc-start-method", "ipc_start_method", start_method, None),
            timeout=_read(config, "--ipc-timeout", "ipc_timeout", positive_seconds, DEFAULT_TIMEOUT),
            runs=_read(config, "--ipc-runs", "ipc_runs", positive_int, DEFAULT_RUNS),
            budget=budget,
            seed=seed,
            jitter=_read(config, "--ipc-jitter", "ipc_jitter", jitter, JITTER_LEVELS[DEFAULT_JITTER]),
            report_path=config.getoption("ipc_report"),
            shards=_read(
                config,
                "--ipc-shards",
                "ipc_shards",
                lambda raw, where: positive_int(raw, where, limit=MAX_SHARDS),
                DEFAULT_SHARDS,
            ),
            leak_check=_read(config, "--ipc-leak-check", "ipc_leak_check", leak_check, "fail"),
            all_runs=_read(config, "--ipc-all-runs", "ipc_all_runs", boolean, False),
            job_shard=_read(config, "--ipc-job-shard", "ipc_job_shard", job_shard, None),
        )
    except SettingError as exc:
        raise pytest.UsageError(f"pytest-ipc: {exc}") from None


# -- markers ----------------------------------------------------------------


class RaceSpec(NamedTuple):
    """``@pytest.mark.ipc_race(...)`` as written: None where it sets nothing."""

    runs: int | None
    budget: float | None
    expect: Any
    jitter: float | None
    has_expect: bool
    all_runs: bool | None


class RacePlan(NamedTuple):
    """How an ``ipc_race`` test runs: its marker resolved against the session's settings."""

    runs: int
    budget: float | None  # no new run starts after this many seconds; None: no limit
    jitter: float
    expect: Any
    has_expect: bool
    runs_from_marker: bool  # the marker set runs=: then the session's budget does not apply
    all_runs: bool  # every run, even once a race is proven (else `runs` is the most it makes)


plan_key = pytest.StashKey[RacePlan]()


def race_plan(node: pytest.Item) -> RacePlan | None:
    """The plan of an ``ipc_race`` test (resolved once per node), or None for other tests.

    Raises :class:`SettingError` for a bad marker; at collection that
    becomes a collection error, so no item with a bad marker ever runs.
    """
    plan = node.stash.get(plan_key, None)
    if plan is not None:
        return plan
    mark = node.get_closest_marker("ipc_race")
    if mark is None:
        return None
    spec = race_spec(mark, node.nodeid)
    cfg = settings(node.config)
    plan = RacePlan(
        runs=spec.runs or cfg.runs,
        budget=spec.budget if spec.budget is not None else (None if spec.runs else cfg.budget),
        jitter=cfg.jitter if spec.jitter is None else spec.jitter,
        expect=spec.expect,
        has_expect=spec.has_expect,
        runs_from_marker=spec.runs is not None,
        all_runs=cfg.all_runs if spec.all_runs is None else spec.all_runs,
    )
    node.stash[plan_key] = plan
    return plan


_NO_EXPECT = object()


def _race_signature(
    runs: Any = None, budget: Any = None, expect: Any = _NO_EXPECT, jitter: Any = None, all_runs: Any = None
) -> None:
    """The signature of ``@pytest.mark.ipc_race``."""


def _bind(signature_of: Callable[..., None], mark: pytest.Mark, where: str) -> inspect.BoundArguments:
    try:
        bound = inspect.signature(signature_of).bind(*mark.args, **mark.kwargs)
    except TypeError as exc:
        params = ", ".join(inspect.signature(signature_of).parameters)
        raise SettingError(f"{where}: {exc} (it takes: {params})") from None
    bound.apply_defaults()
    return bound


def _mark_text(mark: pytest.Mark) -> str:
    """The marker as written, each argument shortened: ``@pytest.mark.ipc_race(runs=0)``."""
    parts = [safe_repr(a, 40) for a in mark.args] + [f"{k}={safe_repr(v, 40)}" for k, v in mark.kwargs.items()]
    return f"@pytest.mark.{mark.name}({', '.join(parts)})"


def race_spec(mark: pytest.Mark, nodeid: str) -> RaceSpec:
    where = f"{nodeid}: {_mark_text(mark)}"
    args = _bind(_race_signature, mark, where).arguments
    runs = None if args["runs"] is None else positive_int(args["runs"], f"{where}: runs")
    budget = None if args["budget"] is None else positive_seconds(args["budget"], f"{where}: budget")
    jit = None if args["jitter"] is None else jitter(args["jitter"], f"{where}: jitter")
    expect = args["expect"]
    has_expect = expect is not _NO_EXPECT
    if has_expect:
        # An outcome is hashable (ipc_outcome.record checks), so an unhashable
        # expect, or one in a list, could never match: a mistake to report now.
        choices = expect if isinstance(expect, (list, set, frozenset)) else (expect,)
        for choice in choices:
            problem = _unhashable(choice)
            if problem:
                raise SettingError(
                    f"{where}: expect must be a hashable value or a list/set of them, "
                    f"got {safe_repr(expect)}: {safe_repr(choice)} {problem}"
                )
    all_runs = args["all_runs"]
    if all_runs is not None and not isinstance(all_runs, bool):
        raise SettingError(f"{where}: all_runs must be True or False, got {safe_repr(all_runs)}")
    return RaceSpec(
        runs=runs,
        budget=budget,
        expect=expect if has_expect else None,
        jitter=jit,
        has_expect=has_expect,
        all_runs=all_runs,
    )


def _unhashable(value: Any) -> str:
    """Why ``value`` cannot be an outcome ("is unhashable"), or "" when it can."""
    try:
        hash(value)
    except TypeError:
        return "is unhashable"
    except Exception as exc:  # a __hash__ that raises something else
        return f"cannot be hashed ({type(exc).__name__})"
    return ""


def _timeout_signature(seconds: Any) -> None:
    """The signature of ``@pytest.mark.ipc_timeout``."""


def timeout_mark(mark: pytest.Mark, nodeid: str) -> float:
    where = f"{nodeid}: {_mark_text(mark)}"
    return positive_seconds(_bind(_timeout_signature, mark, where).arguments["seconds"], where)


timeout_key = pytest.StashKey[float]()


def item_timeout(item: pytest.Item) -> float:
    """The timeout of the test's blocking calls: its ``ipc_timeout`` marker, else the session's."""
    cached = item.stash.get(timeout_key, None)
    if cached is None:
        mark = item.get_closest_marker("ipc_timeout")
        cached = timeout_mark(mark, item.nodeid) if mark else settings(item.config).timeout
        item.stash[timeout_key] = cached
    return cached


def start_methods_mark(mark: pytest.Mark, nodeid: str) -> tuple[str, ...]:
    where = f"{nodeid}: {_mark_text(mark)}"
    if mark.kwargs:
        raise SettingError(f"{where}: takes start method names only, not keywords {sorted(mark.kwargs)}")
    if not mark.args:
        raise SettingError(f"{where}: name at least one of {', '.join(START_METHODS)}")
    methods = []
    for arg in mark.args:
        method = start_method(arg, where, allow_all=True)
        for m in START_METHODS if method == "all" else (method,):
            if m not in methods:
                methods.append(m)
    return tuple(methods)
