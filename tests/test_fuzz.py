"""Bad input, fuzzed through real pytest sessions, and outcomes that are hard to compare or print.

Part one (issue #7, "Bad input"): hypothesis generates the arguments of the
``ipc_race``, ``ipc_timeout`` and ``ipc_start_methods`` markers, the values
of the ``--ipc-*`` options and of the ``ipc_*`` ini keys (wrong types,
negative, huge, NaN, unknown keywords, empty strings, good values too), and
each example runs a pytest session on a tiny test file.  A bad value must
stop the session with a usage error (exit 4) or a collection error (exit 2)
that names the value and where it came from; a good one must be accepted and
used; no example may end in an INTERNALERROR or print a traceback.  Which
values are good is written down here, from the README, in the ``ref_*``
functions, which do not call the plugin's parsers.  These sessions start no
process (the race tests in them record constants), so they run in-process.

Part two: ``ipc_outcome.record`` gets values that cannot be hashed, compared,
printed or pickled, huge values, NaN, and different values that print alike.
Those sessions run in a subprocess, as in test_race.py.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any

import iniconfig
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from sessions import run

# In-process race runs with a jitter above 0 patch multiprocessing's classes
# in this process (no-ops outside a race run).  pytester drops the modules
# that a session imported first, and a second copy of this module would find
# the classes patched by the first and patch nothing: importing it here keeps
# one copy for every session.
import pytest_ipc._worker.amplify  # noqa: F401
from pytest_ipc.race.runner import HISTOGRAM_RUNS

OK = pytest.ExitCode.OK
TESTS_FAILED = pytest.ExitCode.TESTS_FAILED
USAGE_ERROR = pytest.ExitCode.USAGE_ERROR  # 4: bad options and ini keys
INTERRUPTED = pytest.ExitCode.INTERRUPTED  # 2: a collection error (bad markers) stops the session

FUZZ = settings(
    deadline=None,  # each example is a pytest session
    # One pytester directory for all examples of a test: every example writes
    # the files it needs and removes the ini files it does not.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- the rules, from the README -----------------------------------------------------


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()
MAX_RUNS = 10**9  # more runs than this is a typo
MAX_SEED = 2**32 - 1
MAX_SHARDS = 10_000
MAX_SECONDS = 7 * 24 * 3600  # a week: longer waits overflow multiprocessing's C timeouts
JITTER_LEVELS = {"off": 0.0, "low": 0.05, "high": 0.25}
METHODS = ("fork", "spawn", "forkserver")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ref_whole(value: Any, low: int, high: int) -> Any:
    """A whole number from ``low`` to ``high``, or text that is one; else INVALID."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            return INVALID
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        return INVALID
    return value


def ref_seconds(value: Any) -> Any:
    """A number of seconds above 0 and at most a week, or text that is one; else INVALID."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return INVALID
    if not _is_number(value) or not 0 < value <= MAX_SECONDS:  # NaN fails the comparison
        return INVALID
    return float(value)


def ref_budget(text: str) -> Any:
    """``--ipc-budget``: seconds, or ``none`` for no limit (None)."""
    return None if text.strip().lower() == "none" else ref_seconds(text)


def ref_jitter(value: Any) -> Any:
    """off, low, high (any case) or a probability from 0 to 1."""
    if isinstance(value, str):
        if value.strip().lower() in JITTER_LEVELS:
            return JITTER_LEVELS[value.strip().lower()]
        try:
            value = float(value)
        except ValueError:
            return INVALID
    if not _is_number(value) or not 0 <= value <= 1:
        return INVALID
    return float(value)


def ref_method(value: Any, allow_all: bool = True) -> Any:
    names = METHODS + (("all",) if allow_all else ())
    return value.strip() if isinstance(value, str) and value.strip() in names else INVALID


def ref_leak_check(value: Any) -> Any:
    text = value.strip().lower() if isinstance(value, str) else None
    return text if text in ("off", "warn", "fail") else INVALID


# -- sessions -------------------------------------------------------------------------


def run_inprocess(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess("-p", "pytest_ipc", "-p", "no:cacheprovider", *args)


def output_of(result: pytest.RunResult) -> str:
    return "\n".join(result.outlines + result.errlines)


def assert_no_crash(result: pytest.RunResult) -> str:
    """No INTERNALERROR, no traceback, no frame from pytest-ipc's own files; returns the output."""
    text = output_of(result)
    assert result.ret != pytest.ExitCode.INTERNAL_ERROR, text
    assert "INTERNALERROR" not in text, text
    assert "Traceback (most recent call last)" not in text, text
    assert f"{os.sep}pytest_ipc{os.sep}" not in text, text
    return text


def shown(value: Any) -> str:
    """What a message naming ``value`` must contain: the start of its repr, or its type if it has none.

    An int with more digits than Python 3.11 prints (4300) shows in hex.
    """
    try:
        text = repr(value)[:20]
    except Exception:  # a raising __repr__, or an int too long to print
        return hex(value)[:20] if isinstance(value, int) else type(value).__name__
    printable = next((i for i, c in enumerate(text) if not c.isprintable()), len(text))
    return text[:printable] or type(value).__name__


def header_of(text: str) -> str:
    """The plugin's line of the session header."""
    line = next((line for line in text.splitlines() if line.startswith("pytest-ipc: seed ")), None)
    assert line is not None, text
    return line + ","


# -- option and ini values --------------------------------------------------------------

ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "none",
        "None",
        "off",
        "Low",
        " HIGH ",
        "all",
        "fork",
        " spawn\t",
        "forkserver",
        "Fork",
        "threads",
        "warn",
        "FAIL",
        "nan",
        "-nan",
        "inf",
        "-inf",
        "infinity",
        "1e400",
        "-1e400",
        "1e-400",
        "5e-324",
        "-0",
        "0",
        "0.0",
        "-1",
        "1.5",
        "1_000",
        "0x10",
        "١٢",
        "true",
        "[]",
        "{}",
        "4294967295",
        "4294967296",
        "604800",
        "604800.5",
        "1000000000",
        "1000000001",
        "10000",
        "10001",
        "9" * 5000,
        "1" + "0" * 400,
        "\x00",
        "a\nb",
        "\x1b[31mred",
        "--ipc-runs=3",
        "'5'",
        "5 # five",
        "5 ; five",
    ]
)
NUMBER_TEXT = st.one_of(
    st.integers(-(2**70), 2**70).map(str), st.floats().map(repr), st.floats().map(str), st.integers(-5, 50).map(str)
)
SECONDS_TEXT = st.floats(min_value=1e-9, max_value=MAX_SECONDS).map(repr)
PROBABILITY_TEXT = st.one_of(st.floats(0, 1).map(repr), st.sampled_from(["off", "low", "high", " Low "]))

# option: (its rule, good values, what the header shows for a good value, or None)
OPTIONS: dict[str, tuple[Callable[[str], Any], st.SearchStrategy[str], Callable[[Any], str] | None]] = {
    "--ipc-runs": (lambda t: ref_whole(t, 1, MAX_RUNS), st.integers(1, MAX_RUNS).map(str), lambda v: f" runs {v},"),
    "--ipc-seed": (lambda t: ref_whole(t, 0, MAX_SEED), st.integers(0, MAX_SEED).map(str), lambda v: f" seed {v},"),
    "--ipc-shards": (
        lambda t: ref_whole(t, 1, MAX_SHARDS),
        st.integers(1, MAX_SHARDS).map(str),
        lambda v: f", shards {v}," if v > 1 else "",
    ),
    "--ipc-timeout": (ref_seconds, SECONDS_TEXT, lambda v: f" timeout {v:g}s,"),
    "--ipc-budget": (ref_budget, st.one_of(SECONDS_TEXT, st.just(" NONE")), None),
    "--ipc-jitter": (ref_jitter, PROBABILITY_TEXT, lambda v: f" jitter {v:g},"),
    "--ipc-start-method": (
        ref_method,
        st.sampled_from(["fork", "spawn", "forkserver", "all", " spawn "]),
        lambda v: f" start method {v}",
    ),
    "--ipc-leak-check": (ref_leak_check, st.sampled_from(["off", "warn", "fail", " Warn "]), None),
}


def option_values(good: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Good values, good values in spaces, odd text, numbers, any text."""
    return st.one_of(good, good.map(lambda t: f" {t}\t"), ODD_TEXT, NUMBER_TEXT, st.text(max_size=12))


# Some of the options, with any values, or with good values only (else few examples would be all good).
SOME_OPTIONS = st.one_of(
    st.fixed_dictionaries({}, optional={name: option_values(good) for name, (_, good, _) in OPTIONS.items()}),
    st.fixed_dictionaries({}, optional={name: good for name, (_, good, _) in OPTIONS.items()}),
)


# A race test and a plain one; jitter off keeps amplification out of the option fuzz.
OPTIONS_FILE = """
import pytest

@pytest.mark.ipc_race(runs=2, jitter="off")
def test_race(ipc_outcome):
    ipc_outcome.record(1)

def test_plain(ipc_context):
    pass
"""


def check_settings(result: pytest.RunResult, given_values: dict[str, Any], source: Callable[[str], str]) -> None:
    """A bad value stops the session naming it and its source; good ones are used, as the header shows.

    ``given_values`` maps option names to the values pytest-ipc reads;
    ``source(option)`` is how the error must name where the value came from.
    """
    text = assert_no_crash(result)
    parsed = {option: OPTIONS[option][0](value) for option, value in given_values.items()}
    bad = [option for option, value in parsed.items() if value is INVALID]
    event("rejected" if bad else "accepted")
    if bad:
        assert result.ret == USAGE_ERROR, text
        assert "ERROR: pytest-ipc: " in text, text
        # The first bad one stops the session; which is first is not the point.
        assert any(source(o) in text and shown(given_values[o]) in text for o in bad), (bad, text)
        return
    assert result.ret == OK, text
    header = header_of(text)
    for option, value in parsed.items():
        show = OPTIONS[option][2]
        if show is not None and show(value):
            assert show(value) in header, (option, value, header)


@settings(FUZZ, max_examples=70)
@given(options=SOME_OPTIONS)
@example(options={"--ipc-runs": "9" * 5000})  # int() refuses that many digits
@example(options={"--ipc-budget": "1e400", "--ipc-jitter": "nan"})
def test_fuzzed_options(pytester: pytest.Pytester, options: dict[str, str]) -> None:
    """Every --ipc-* option: a bad value is a usage error naming the option and value, good ones are used."""
    pytester.makepyfile(test_options=OPTIONS_FILE)
    result = run_inprocess(pytester, *[f"{name}={value}" for name, value in options.items()])
    check_settings(result, options, lambda option: f"{option}=")


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: every character but plain ASCII escaped."""
    return '"' + "".join(c if " " <= c <= "~" and c not in '"\\' else f"\\U{ord(c):08x}" for c in text) + '"'


def one_line(text: str) -> bool:
    return text.splitlines() in ([], [text])


@settings(FUZZ, max_examples=50)
@given(
    values=SOME_OPTIONS.map(lambda options: {name[2:].replace("-", "_"): value for name, value in options.items()}),
    toml=st.booleans(),
)
def test_fuzzed_ini_keys(pytester: pytest.Pytester, values: dict[str, str], toml: bool) -> None:
    """Every ipc_* ini key, in pytest.ini or pyproject.toml: a bad value is a usage error naming key, value, file."""
    for leftover in ("pytest.ini", "pyproject.toml"):
        (pytester.path / leftover).unlink(missing_ok=True)
    if toml:
        pytester.makefile(
            ".toml",
            pyproject="[tool.pytest.ini_options]\n"
            + "".join(f"{key} = {toml_string(value)}\n" for key, value in values.items()),
        )
        read = dict(values)  # a TOML string is read as it is
        source = "pyproject.toml"
    else:
        assume(all(one_line(value) for value in values.values()))
        content = "[pytest]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
        pytester.makefile(".ini", pytest=content)
        # What pytest reads from the file (iniconfig strips it, "# ..." stays).
        parsed = iniconfig.IniConfig("pytest.ini", data=content)
        read = {key: parsed["pytest"][key] for key in values}
        source = "pytest.ini"
    pytester.makepyfile(test_ini=OPTIONS_FILE)
    result = run_inprocess(pytester)
    # An empty key is as if it were not there.
    check_settings(
        result,
        {"--" + key.replace("_", "-"): value for key, value in read.items() if value != ""},
        lambda option: f"ini key {option[2:].replace('-', '_')} = ",
    )
    if result.ret == USAGE_ERROR:
        assert f" in {source}" in output_of(result)


# -- marker arguments --------------------------------------------------------------------

# Values with no literal, defined by name in the generated test files.
VALUES_MODULE = '''
"""Marker arguments for the fuzzed test files that have no literal."""


class BadRepr:
    def __repr__(self):
        raise RuntimeError("no repr")


class BadHash:
    def __hash__(self):
        raise RuntimeError("no hash")

    def __repr__(self):
        return "BadHash()"


class Escapes:
    def __repr__(self):
        return "two\\nlines\\x1b[31m"


BAD_REPR = BadRepr()
BAD_HASH = BadHash()
ESCAPES = Escapes()
HUGE_INT = 2 ** 20000  # too many digits for repr() since Python 3.11
HUGE_STR = "9" * 1_000_000
HUGE_TUPLE = (0,) * 100_000
'''
VALUES: dict[str, Any] = {}
exec(VALUES_MODULE, VALUES)  # the same values here, for the rules
VALUES = {name: value for name, value in VALUES.items() if name.isupper()}


class Named:
    """One of VALUES as hypothesis generates it: hypothesis must be able to print its examples."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def real(value: Any) -> Any:
    """``value`` with every Named replaced by the value it names."""
    if isinstance(value, Named):
        return VALUES[value.name]
    if isinstance(value, (list, tuple)):
        return type(value)(map(real, value))
    if isinstance(value, dict):
        return {k: real(v) for k, v in value.items()}
    return value  # sets hold small ints only


def to_source(value: Any) -> str:
    """Python source that makes ``value`` (with Named) in a generated test file."""
    if isinstance(value, Named):
        return value.name
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**1000 else hex(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
    if isinstance(value, complex):
        return f"complex({to_source(value.real)}, {to_source(value.imag)})"
    if isinstance(value, (str, bytes)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(to_source, value)) + "]"
    if isinstance(value, tuple):
        return "(" + "".join(to_source(v) + ", " for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{to_source(k)}: {to_source(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}([{', '.join(map(to_source, value))}])"
    raise TypeError(value)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 30),
    st.integers(),
    st.integers(10**8, 10**40),
    st.floats(),
    st.floats(0, 1),
    st.complex_numbers(max_magnitude=10),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.sampled_from(["fork", " spawn", "all", "off", "low", "HIGH", "none", "2", " 3 ", "0.5", "nan", "1e400", ""]),
    st.sampled_from([Named(name) for name in sorted(VALUES)]),
)
ANY_VALUE = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=3), inner, max_size=2),
        st.sets(st.integers(0, 9), max_size=3),
        st.frozensets(st.integers(0, 9), max_size=3),
    ),
    max_leaves=4,
)
UNKNOWN_KEYWORDS = st.dictionaries(
    st.sampled_from(["rnus", "seed", "timeout", "Runs", "expected", "methods", "_"]), ANY_VALUE, max_size=1
)


def marker_call(args: list[Any], kwargs: dict[str, Any]) -> str:
    return ", ".join([to_source(a) for a in args] + [f"{k}={to_source(v)}" for k, v in kwargs.items()])


def bind(signature: Callable[..., None], args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The marker's arguments by name, or None when they do not fit its signature."""
    try:
        bound = inspect.signature(signature).bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


def check_marker_error(text: str, result: pytest.RunResult, mark: str, bad: list[tuple[str, Any]], takes: str) -> None:
    """A collection error naming the test, the marker, and a bad argument's name and value, or the signature.

    ``bad`` is (what names the argument in the message, its value) for each bad one; empty when the
    arguments do not fit the marker's signature.
    """
    assert result.ret == INTERRUPTED, text
    assert "ERROR collecting test_marked.py" in text, text
    assert f"pytest-ipc: test_marked.py::test_marked: @pytest.mark.{mark}(" in text, text
    if not bad:
        assert f"(it takes: {takes})" in text, text
    else:
        # The first bad argument stops collection; which one is first is not the point.
        assert any(name in text and shown(value) in text for name, value in bad), (bad, text)


# -- ipc_race ---------------------------------------------------------------------------

_NO_EXPECT = object()


def _race(
    runs: Any = None, budget: Any = None, expect: Any = _NO_EXPECT, jitter: Any = None, all_runs: Any = None
) -> None:
    """The documented signature of @pytest.mark.ipc_race."""


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except Exception:
        return False
    return True


OUTCOME = 7  # what the generated race test records in every run


def _matches(expect: Any) -> bool:
    choices = expect if isinstance(expect, (list, set, frozenset)) else [expect]
    return any(choice == OUTCOME for choice in choices)


SHORT_BUDGET = 0.05  # a budget under which many runs end quickly
# runs= values: bad ones, good ones up to 5, and many runs only under a short budget (see assume below).
RUNS = st.one_of(st.integers(1, 5), st.integers(1, 5).map(lambda n: f" {n} "), st.integers(-3, 0), ANY_VALUE)
BUDGETS = st.one_of(
    st.floats(1e-6, SHORT_BUDGET), st.sampled_from([5e-324, "0.01", 0, -1, "none", MAX_SECONDS + 1]), ANY_VALUE
)
JITTERS = st.one_of(st.floats(0, 1), st.sampled_from(["off", " LOW", "high", "0.3", "1.5", "nan", -0.1, 2]), ANY_VALUE)
EXPECTS = st.one_of(
    st.just(OUTCOME),
    st.sampled_from(
        [
            7.0,
            "7",
            [7],
            {7, 8},
            frozenset([7]),
            (7,),
            [[7]],
            [7, [8]],
            ([7],),
            {"a": 7},
            [],
            float("nan"),
            complex(7, 0),
        ]
    ),
    ANY_VALUE,
)
GOOD_RACE_KEYWORDS = st.fixed_dictionaries(
    {},
    optional={
        "runs": st.one_of(st.integers(1, 5), st.sampled_from(["3", " 2 ", None])),
        "budget": st.one_of(st.floats(1e-6, MAX_SECONDS), st.sampled_from(["0.5", 30, None])),
        "expect": st.sampled_from([OUTCOME, 7.0, "7", None, (7,), [6, 7], {7}, frozenset([8]), float("nan")]),
        "jitter": st.one_of(st.floats(0, 1), st.sampled_from(["off", " Low", "HIGH", "0.5", 1, 0, None])),
        "all_runs": st.sampled_from([True, False, None]),
    },
)
RACE_CALLS = st.one_of(
    st.tuples(st.just([]), GOOD_RACE_KEYWORDS),
    st.tuples(
        st.one_of(st.just([]), st.builds(lambda first, rest: [first, *rest], RUNS, st.lists(ANY_VALUE, max_size=4))),
        st.builds(
            lambda known, unknown: {**known, **unknown},
            st.fixed_dictionaries(
                {},
                optional={
                    "runs": RUNS,
                    "budget": BUDGETS,
                    "expect": EXPECTS,
                    "jitter": JITTERS,
                    "all_runs": st.one_of(st.booleans(), ANY_VALUE),
                },
            ),
            UNKNOWN_KEYWORDS,
        ),
    ),
)

RACE_FILE = """
import pytest
from fuzz_values import *

@pytest.mark.ipc_race({call})
def test_marked(ipc_outcome):
    ipc_outcome.record({outcome})
"""


@settings(FUZZ, max_examples=80)
@given(call=RACE_CALLS)
# Bugs these found, kept: a __repr__ that raises, ints too big for repr() or for a float.
@example(call=([], {"rnus": Named("BAD_REPR")}))
@example(call=([Named("HUGE_INT")], {}))
@example(call=([], {"budget": 10**400, "jitter": 10**400}))
@example(call=([], {"expect": Named("BAD_HASH")}))
@example(call=([], {"expect": ([7],)}))  # an unhashable tuple can never equal an outcome
def test_fuzzed_race_marker(pytester: pytest.Pytester, call: tuple[list[Any], dict[str, Any]]) -> None:
    """ipc_race(runs, budget, expect, jitter): bad arguments are a collection error, good ones are used."""
    positional, keywords = call
    bound = bind(_race, real(positional), real(keywords))
    rule = {
        "runs": lambda v: ref_whole(v, 1, MAX_RUNS),
        "budget": ref_seconds,
        "jitter": ref_jitter,
        "expect": lambda v: v if all(map(_hashable, v if isinstance(v, (list, set, frozenset)) else [v])) else INVALID,
        # Only True, False or None: 0, 1 and "yes" are not taken for booleans in a marker.
        "all_runs": lambda v: v if v is None or isinstance(v, bool) else INVALID,
    }
    parsed = (
        {}
        if bound is None
        else {name: None if bound[name] is None and name != "expect" else rule[name](bound[name]) for name in rule}
    )
    # "...ipc_race(runs=0): runs: expected ...", "...ipc_race(expect=[[]]): expect must be ..."
    bad = [(f"): {name}", bound[name]) for name, value in parsed.items() if value is INVALID] if bound else []
    if bound is not None and not bad:
        # Good values that would run for long: many runs, no short budget.
        assume((parsed["runs"] or 20) <= 20 or (parsed["budget"] is not None and parsed["budget"] <= SHORT_BUDGET))
    pytester.makepyfile(fuzz_values=VALUES_MODULE)
    pytester.makepyfile(test_marked=RACE_FILE.format(call=marker_call(positional, keywords), outcome=OUTCOME))
    result = run_inprocess(pytester, "--ipc-report=report.json")
    text = assert_no_crash(result)
    event("rejected" if bound is None or bad else "accepted")
    if bound is None or bad:
        check_marker_error(text, result, "ipc_race", bad, "runs, budget, expect, jitter, all_runs")
        return
    expect = bound["expect"]
    passes = expect is _NO_EXPECT or _matches(expect)
    assert result.ret == (OK if passes else TESTS_FAILED), text
    if not passes:
        assert f"UnexpectedOutcome: outcome {OUTCOME} of all " in text, text
    with open(pytester.path / "report.json") as f:
        (entry,) = json.load(f)["tests"]
    runs = parsed["runs"] or 20
    assert entry["max_runs"] == runs
    if not passes and not parsed["all_runs"]:
        # An outcome outside expect makes the verdict certain at run 0: at most
        # the histogram's allowance follows (fewer if the budget ends first).
        assert 1 <= entry["runs"] <= min(runs, 1 + HISTOGRAM_RUNS), entry
        assert (entry["stopped_early"] is not None) == (entry["runs"] < runs), entry
    elif parsed["budget"] is None:
        assert entry["runs"] == runs
    else:
        assert 1 <= entry["runs"] <= runs
    assert entry["jitter"] == (JITTER_LEVELS["low"] if parsed["jitter"] is None else parsed["jitter"])
    assert entry["verdict"] == ("passed" if passes else "unexpected")


# -- ipc_timeout ------------------------------------------------------------------------


def _timeout(seconds: Any) -> None:
    """The documented signature of @pytest.mark.ipc_timeout."""


GOOD_SECONDS = st.one_of(st.floats(1e-9, MAX_SECONDS), st.integers(1, MAX_SECONDS), SECONDS_TEXT)
SECONDS = st.one_of(
    GOOD_SECONDS,
    st.integers(-3, 0),
    ANY_VALUE,
    st.sampled_from([MAX_SECONDS + 1, 10**400, "1e400", "nan", float("inf"), " 2.5 "]),
)
TIMEOUT_CALLS = st.one_of(
    st.builds(lambda seconds: ([seconds], {}), GOOD_SECONDS),
    st.builds(lambda seconds: ([], {"seconds": seconds}), GOOD_SECONDS),
    st.tuples(
        st.lists(SECONDS, max_size=2),
        st.builds(
            lambda known, unknown: {**known, **unknown},
            st.fixed_dictionaries({}, optional={"seconds": SECONDS}),
            UNKNOWN_KEYWORDS,
        ),
    ),
)

TIMEOUT_FILE = """
import pytest
from fuzz_values import *

@pytest.mark.ipc_timeout({call})
def test_marked(ipc_workers):
    assert ipc_workers.timeout == {expected}
"""


@settings(FUZZ, max_examples=50)
@given(call=TIMEOUT_CALLS)
@example(call=([10**400], {}))
@example(call=([], {"seconds": Named("BAD_REPR")}))
def test_fuzzed_timeout_marker(pytester: pytest.Pytester, call: tuple[list[Any], dict[str, Any]]) -> None:
    """ipc_timeout(seconds): a bad value is a collection error naming it; a good one is the workers' timeout."""
    positional, keywords = call
    bound = bind(_timeout, real(positional), real(keywords))
    seconds = INVALID if bound is None else ref_seconds(bound["seconds"])
    pytester.makepyfile(fuzz_values=VALUES_MODULE)
    pytester.makepyfile(
        test_marked=TIMEOUT_FILE.format(
            call=marker_call(positional, keywords),
            expected="None" if seconds is INVALID else f"float.fromhex({seconds.hex()!r})",
        )
    )
    result = run_inprocess(pytester)
    text = assert_no_crash(result)
    event("rejected" if seconds is INVALID else "accepted")
    if seconds is INVALID:
        bad = [] if bound is None else [("ipc_timeout", bound["seconds"])]
        check_marker_error(text, result, "ipc_timeout", bad, "seconds")
    else:
        assert result.ret == OK, text


# -- ipc_start_methods ----------------------------------------------------------------

GOOD_METHOD = st.sampled_from(["fork", "spawn", "forkserver", "all", " fork "])
METHOD_ARGS = st.one_of(GOOD_METHOD, st.sampled_from(["FORK", "thread", ""]), ANY_VALUE)
METHODS_CALLS = st.one_of(
    st.tuples(st.lists(GOOD_METHOD, min_size=1, max_size=4), st.just({})),
    st.tuples(
        st.lists(METHOD_ARGS, max_size=4), st.dictionaries(st.sampled_from(["methods", "all"]), METHOD_ARGS, max_size=1)
    ),
)

METHODS_FILE = """
import pytest
from fuzz_values import *

@pytest.mark.ipc_start_methods({call})
def test_marked(ipc_start_method, ipc_context):
    assert ipc_context.get_start_method() == ipc_start_method
"""


@settings(FUZZ, max_examples=50)
@given(call=METHODS_CALLS)
@example(call=([Named("BAD_REPR")], {}))
@example(call=(["fork"], {"methods": Named("ESCAPES")}))
def test_fuzzed_start_methods_marker(pytester: pytest.Pytester, call: tuple[list[Any], dict[str, Any]]) -> None:
    """ipc_start_methods(*names): bad names are a collection error naming them; good ones give [fork]... ids."""
    positional, keywords = call
    parsed = [ref_method(real(arg)) for arg in positional]
    pytester.makepyfile(fuzz_values=VALUES_MODULE)
    pytester.makepyfile(test_marked=METHODS_FILE.format(call=marker_call(positional, keywords)))
    result = run_inprocess(pytester, "-v")
    text = assert_no_crash(result)
    rejected = bool(keywords) or not positional or INVALID in parsed
    event("rejected" if rejected else "accepted")
    if rejected:
        assert result.ret == INTERRUPTED, text
        assert "pytest-ipc: test_marked.py::test_marked: @pytest.mark.ipc_start_methods(" in text, text
        if keywords:
            assert "not keywords" in text, text
        elif not positional:
            assert "name at least one of fork, spawn, forkserver" in text, text
        else:
            bad = [real(arg) for arg, method in zip(positional, parsed, strict=False) if method is INVALID]
            assert any(re.search("got .*" + re.escape(shown(arg)), text) for arg in bad), text
        return
    expected: list[str] = []
    for method in parsed:
        expected += [m for m in (METHODS if method == "all" else (method,)) if m not in expected]
    assert result.ret == OK, text
    assert re.findall(r"test_marked\.py::test_marked\[(\w+)\] PASSED", text) == expected


# -- part two: outcomes that are hard to hash, compare, print or pickle -----------------------


# Part two's sessions run in a subprocess (sessions.run), each bounded by this.
SESSION_TIMEOUT = 300


def load_report(pytester: pytest.Pytester) -> dict[str, dict[str, Any]]:
    """The --ipc-report=report.json entries by test name."""
    with open(pytester.path / "report.json") as f:
        return {t["nodeid"].split("::")[1]: t for t in json.load(f)["tests"]}


def test_unhashable_outcomes_name_their_type(pytester: pytest.Pytester) -> None:
    """A list, dict or set, or a value whose __hash__ raises, fails every run naming the type and the value."""
    pytester.makepyfile(
        test_unhashable="""
        import pytest

        class BadHash:
            def __hash__(self):
                raise RuntimeError("no hash today")

            def __repr__(self):
                return "BadHash()"

        @pytest.mark.ipc_race(runs=2)
        @pytest.mark.parametrize("value", [[1, 2], {"a": 1}, {3}, BadHash()], ids=["list", "dict", "set", "raises"])
        def test_record(ipc_outcome, value):
            ipc_outcome.record(value)
        """
    )
    result = run(pytester, "--ipc-report=report.json", timeout=SESSION_TIMEOUT, cache=False)
    result.assert_outcomes(failed=4)
    for shown_value in ("list [[]1, 2]", "dict {'a': 1}", "set {3}"):
        result.stdout.fnmatch_lines(
            [
                "RunsFailed: failed in 2 of 2 runs *",
                "*failed (UnhashableOutcome)      2",
                (
                    f"E   *UnhashableOutcome: ipc_outcome.record(): the outcome must be hashable so that runs can be "
                    f"compared; got {shown_value} (record a tuple instead of a list, a frozenset instead of a set)"
                ),
            ]
        )
    result.stdout.fnmatch_lines(
        ["E   *UnhashableOutcome: *must be hashable*; hashing BadHash BadHash() raised RuntimeError('no hash today')"]
    )
    assert_no_crash(result)
    assert {t["verdict"] for t in load_report(pytester).values()} == {"failed"}


def test_unprintable_outcomes_still_print_a_report(pytester: pytest.Pytester) -> None:
    """A __repr__ that raises, returns no text, or writes control characters: the report prints, one line per row."""
    pytester.makepyfile(
        test_unprintable="""
        import pytest

        calls = [0]

        class BadRepr:
            def __init__(self, n):
                self.n = n

            def __repr__(self):
                raise RuntimeError("no repr")

            def __eq__(self, other):
                return isinstance(other, BadRepr) and self.n == other.n

            def __hash__(self):
                return self.n

        class NotText(BadRepr):
            def __repr__(self):
                return 42

        class Escapes(BadRepr):
            def __repr__(self):
                return "line one\\nline two\\x1b[2J"

        @pytest.mark.ipc_race(runs=3)
        def test_steady(ipc_outcome):
            ipc_outcome.record(BadRepr(1))

        @pytest.mark.ipc_race(runs=4)
        def test_differ(ipc_outcome):
            calls[0] += 1
            ipc_outcome.record(BadRepr(calls[0] % 2))

        @pytest.mark.ipc_race(runs=2, expect=1)
        def test_unexpected(ipc_outcome):
            ipc_outcome.record(BadRepr(1))

        @pytest.mark.ipc_race(runs=2)
        def test_not_text(ipc_outcome):
            ipc_outcome.record(NotText(1))

        @pytest.mark.ipc_race(runs=2)
        def test_escapes(ipc_outcome):
            ipc_outcome.record(Escapes(1))
        """
    )
    result = run(pytester, "-v", "--ipc-report=report.json", timeout=SESSION_TIMEOUT, cache=False)
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(
        [
            "RaceDetected: outcomes differ across 4 runs *",
            "*outcome   runs",
            "  <unprintable BadRepr: RuntimeError> #1      2",
            "  <unprintable BadRepr: RuntimeError> #2      2",
            "  (outcomes marked #1, #2, ... differ but print alike)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "UnexpectedOutcome: outcome <unprintable BadRepr: RuntimeError> of all 2 runs is not the expected 1 (*",
        ]
    )
    # The -v report: one line per histogram row, control characters escaped.
    result.stdout.fnmatch_lines(
        [
            "test_unprintable.py::test_steady *3 runs*passed*",
            "*outcome   runs",
            "    <unprintable BadRepr: RuntimeError>      3",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "test_unprintable.py::test_not_text *passed*",
            "*outcome   runs",
            "    <unprintable NotText: TypeError>      2",
        ]
    )
    result.stdout.fnmatch_lines(
        ["test_unprintable.py::test_escapes *passed*", "*outcome   runs", r"    line one\nline two\x1b[[]2J      2"]
    )
    assert "\x1b[2J" not in result.stdout.str()
    assert_no_crash(result)
    report = load_report(pytester)
    assert report["test_differ"]["histogram"] == [
        ["<unprintable BadRepr: RuntimeError> #1", 2],
        ["<unprintable BadRepr: RuntimeError> #2", 2],
    ]
    assert report["test_escapes"]["histogram"] == [[r"line one\nline two\x1b[2J", 2]]


def test_huge_outcomes_keep_the_report_short_and_fast(pytester: pytest.Pytester) -> None:
    """A million-element tuple, a 1 MB string, an int too long to print: short labels, and no slow verdict."""
    pytester.makepyfile(
        test_huge="""
        import pytest

        calls = [0]

        @pytest.mark.ipc_race(runs=5)
        def test_tuple(ipc_outcome):
            ipc_outcome.record(tuple(range(10**6)))

        @pytest.mark.ipc_race(runs=5)
        def test_string(ipc_outcome):
            ipc_outcome.record("x" * 10**6)

        @pytest.mark.ipc_race(runs=3)
        def test_int(ipc_outcome):
            ipc_outcome.record(2 ** 100_000)

        @pytest.mark.ipc_race(runs=4)
        def test_differ_at_the_end(ipc_outcome):
            calls[0] += 1
            ipc_outcome.record("x" * 10**6 + str(calls[0] % 2))
        """
    )
    started = time.monotonic()
    result = run(pytester, "-v", "--ipc-report=report.json", timeout=SESSION_TIMEOUT, cache=False)
    elapsed = time.monotonic() - started
    result.assert_outcomes(passed=3, failed=1)
    assert_no_crash(result)
    assert max(map(len, result.outlines)) < 200
    # The shortened labels keep the end, where these two differ.
    result.stdout.fnmatch_lines(
        [
            "RaceDetected: outcomes differ across 4 runs *",
            "*outcome   runs",
            "  'xxxxx*xxx...xxx*xx0'      2",
            "  'xxxxx*xxx...xxx*xx1'      2",
        ]
    )
    result.stdout.fnmatch_lines(["test_huge.py::test_int *passed*", "*outcome   runs", "    0x1000*...*0000      3"])
    report = load_report(pytester)
    assert {n: t["verdict"] for n, t in report.items()} == {
        "test_tuple": "passed",
        "test_string": "passed",
        "test_int": "passed",
        "test_differ_at_the_end": "race",
    }
    assert len(report["test_tuple"]["histogram"][0][0]) <= 80
    # The whole session took about 1.5 s on 2 busy cores; the bound only
    # catches a report whose cost gets out of hand with the values' size.
    assert elapsed < 60, elapsed


def test_unpicklable_outcomes_under_xdist(pytester: pytest.Pytester) -> None:
    """Outcomes that cannot be pickled stay in the xdist worker: only plain race data reaches the controller."""
    pytester.makepyfile(
        test_unpicklable="""
        import threading
        import pytest

        calls = [0]

        class Unpicklable:
            def __init__(self, n):
                self.n = n
                self.lock = threading.Lock()  # a lock cannot be pickled

            def __eq__(self, other):
                return isinstance(other, Unpicklable) and self.n == other.n

            def __hash__(self):
                return self.n

            def __repr__(self):
                return f"Unpicklable({self.n})"

        @pytest.mark.ipc_race(runs=3)
        def test_steady(ipc_outcome):
            ipc_outcome.record(Unpicklable(1))

        @pytest.mark.ipc_race(runs=4)
        def test_differ(ipc_outcome):
            calls[0] += 1
            ipc_outcome.record(Unpicklable(calls[0] % 2))

        @pytest.mark.ipc_race(runs=2, expect=Unpicklable(2))
        def test_unexpected(ipc_outcome):
            ipc_outcome.record(Unpicklable(1))
        """
    )
    result = run(pytester, "-n", "2", "--ipc-report=report.json", timeout=SESSION_TIMEOUT, cache=False)
    result.assert_outcomes(passed=1, failed=2)
    assert_no_crash(result)
    result.stdout.no_fnmatch_line("*pickle*")
    result.stdout.fnmatch_lines(
        [
            "RaceDetected: outcomes differ across 4 runs *",
            "*outcome   runs",
            "  Unpicklable(0)      2",
            "  Unpicklable(1)      2",
        ]
    )
    result.stdout.fnmatch_lines(
        ["UnexpectedOutcome: outcome Unpicklable(1) of all 2 runs is not the expected Unpicklable(2) (*"]
    )
    report = load_report(pytester)
    assert {n: (t["verdict"], t["histogram"]) for n, t in report.items()} == {
        "test_steady": ("passed", [["Unpicklable(1)", 3]]),
        "test_differ": ("race", [["Unpicklable(0)", 2], ["Unpicklable(1)", 2]]),
        "test_unexpected": ("unexpected", [["Unpicklable(1)", 2]]),
    }


def test_outcomes_whose_eq_raises_or_is_not_a_bool(pytester: pytest.Pytester) -> None:
    """__eq__ that raises, or returns an array-like: a clear error; one that returns 0/1: the right verdict."""
    pytester.makepyfile(
        test_eq="""
        import pytest

        calls = [0]

        class Vec:
            \"\"\"Like a numpy array: == compares element-wise and the result has no truth value.\"\"\"

            def __init__(self, *values):
                self.values = values

            def __eq__(self, other):
                return Vec(*[a == b for a, b in zip(self.values, other.values)])

            def __bool__(self):
                raise ValueError("the truth value of a Vec is ambiguous")

            def __hash__(self):
                return hash(self.values)

            def __repr__(self):
                return f"Vec{self.values}"

        class Grumpy:
            def __eq__(self, other):
                raise RuntimeError("no comparisons")

            __hash__ = object.__hash__

        class Fuzzy:
            \"\"\"== answers 1 or 0, not True or False.\"\"\"

            def __init__(self, n):
                self.n = n

            def __eq__(self, other):
                return 1 if self.n == other.n else 0

            def __hash__(self):
                return 0

            def __repr__(self):
                return f"Fuzzy({self.n})"

        @pytest.mark.ipc_race(runs=3)
        def test_vec(ipc_outcome):
            ipc_outcome.record(Vec(1, 2))

        @pytest.mark.ipc_race(runs=3)
        def test_vec_in_a_tuple(ipc_outcome):
            ipc_outcome.record(("total", Vec(1, 2)))

        @pytest.mark.ipc_race(runs=2, expect=Grumpy())
        def test_grumpy_expect(ipc_outcome):
            ipc_outcome.record(7)

        @pytest.mark.ipc_race(runs=4)
        def test_fuzzy_same(ipc_outcome):
            ipc_outcome.record(Fuzzy(1))

        @pytest.mark.ipc_race(runs=4)
        def test_fuzzy_differ(ipc_outcome):
            calls[0] += 1
            ipc_outcome.record(Fuzzy(calls[0] % 2))
        """
    )
    result = run(pytester, "--ipc-report=report.json", timeout=SESSION_TIMEOUT, cache=False)
    result.assert_outcomes(passed=1, failed=4)
    assert_no_crash(result)
    for name in ("test_vec", "test_vec_in_a_tuple"):
        result.stdout.fnmatch_lines(
            [
                f"*_ {name} _*",
                (
                    "RunsFailed: cannot tell whether 3 runs agree (start method *): the outcome *Vec(1, 2)* of run 1 "
                    "cannot be compared with earlier runs' outcomes: ValueError('the truth value of a Vec is ambiguous'); "
                    "record plain values (numbers, strings, tuples of them)"
                ),
            ]
        )
    result.stdout.fnmatch_lines(
        [
            (
                "UnexpectedOutcome: outcome 7 of all 2 runs cannot be compared with the expected <*Grumpy object at *>: "
                "RuntimeError('no comparisons') (*"
            ),
        ]
    )
    result.stdout.fnmatch_lines(
        ["RaceDetected: outcomes differ across 4 runs *", "*outcome   runs", "  Fuzzy(0)      2", "  Fuzzy(1)      2"]
    )
    verdicts = {n: t["verdict"] for n, t in load_report(pytester).items()}
    assert verdicts == {
        "test_vec": "failed",
        "test_vec_in_a_tuple": "failed",
        "test_grumpy_expect": "unexpected",
        "test_fuzzy_same": "passed",
        "test_fuzzy_differ": "race",
    }


def test_nan_outcomes_agree(pytester: pytest.Pytester) -> None:
    """NaN counts as equal to NaN: runs that all compute NaN agree, NaN against a number is a race.

    ``nan != nan``, so compared with ``==`` every run would differ from every
    other and a test that reliably computes NaN would be reported as a race;
    what matters is whether the runs got the same result.  The same holds
    for NaN inside tuples and for ``expect=``.
    """
    pytester.makepyfile(
        test_nan="""
        import pytest

        calls = [0]
        nans = []

        def new_nan():
            nan = float("nan")
            assert all(nan is not other for other in nans)  # equal by value, not by identity
            nans.append(nan)
            return nan

        @pytest.mark.ipc_race(runs=3)
        def test_nan(ipc_outcome):
            ipc_outcome.record(new_nan())

        @pytest.mark.ipc_race(runs=3)
        def test_nan_in_a_tuple(ipc_outcome):
            ipc_outcome.record((1, new_nan(), (new_nan(), "x")))

        @pytest.mark.ipc_race(runs=4)
        def test_nan_or_number(ipc_outcome):
            calls[0] += 1
            ipc_outcome.record(new_nan() if calls[0] % 2 else 0.5)

        @pytest.mark.ipc_race(runs=2, expect=[1.0, float("nan")])
        def test_expect_nan(ipc_outcome):
            ipc_outcome.record(new_nan())
        """
    )
    result = run(pytester, "-v", "--ipc-report=report.json", timeout=SESSION_TIMEOUT, cache=False)
    result.assert_outcomes(passed=3, failed=1)
    assert_no_crash(result)
    result.stdout.fnmatch_lines(
        ["RaceDetected: outcomes differ across 4 runs *", "*outcome   runs", "      0.5      2", "      nan      2"]
    )
    report = load_report(pytester)
    assert report["test_nan"]["histogram"] == [["nan", 3]]
    assert report["test_nan_in_a_tuple"]["histogram"] == [["(1, nan, (nan, 'x'))", 3]]
    assert report["test_expect_nan"]["verdict"] == "passed"


PRINT_ALIKE = """
import pytest

calls = {"objects": 0, "tuples": 0, "strings": 0, "numbers": 0}

class Same:
    def __init__(self, n):
        self.n = n

    def __eq__(self, other):
        return isinstance(other, Same) and self.n == other.n

    def __hash__(self):
        return self.n

    def __repr__(self):
        return "Same()"

def turn(name):
    calls[name] += 1
    return calls[name] % 2

@pytest.mark.ipc_race(runs=4)
def test_equal_reprs(ipc_outcome):
    ipc_outcome.record(Same(turn("objects")))

@pytest.mark.ipc_race(runs=4)
def test_long_tuples(ipc_outcome):
    ipc_outcome.record((0,) * 200 + (turn("tuples"),))

@pytest.mark.ipc_race(runs=4)
def test_strings_differ_in_the_middle(ipc_outcome):
    ipc_outcome.record("a" * 100 + str(turn("strings")) + "a" * 100)

@pytest.mark.ipc_race(runs=4)
def test_equal_values_print_differently(ipc_outcome):
    # Compared by value: 1 == 1.0, so these runs agree; the row shows the first run's.
    ipc_outcome.record(1 if turn("numbers") else 1.0)
"""


def test_different_outcomes_that_print_alike_are_a_race(pytester: pytest.Pytester) -> None:
    """The verdict compares the outcomes, not their printed labels: equal or equally shortened reprs still race."""
    pytester.makepyfile(test_alike=PRINT_ALIKE)
    result = run(pytester, "--ipc-report=report.json", timeout=SESSION_TIMEOUT, cache=False)
    result.assert_outcomes(passed=1, failed=3)
    assert_no_crash(result)
    result.stdout.fnmatch_lines(
        [
            "*_ test_equal_reprs _*",
            "RaceDetected: outcomes differ across 4 runs *",
            "    outcome   runs",
            "  Same() #1      2",
            "  Same() #2      2",
            "  (outcomes marked #1, #2, ... differ but print alike)",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ test_long_tuples _*",
            "RaceDetected: outcomes differ across 4 runs *",
            "*outcome   runs",
            "  (0, 0, 0, *...*0, 0, 0)      2",
            "  (0, 0, 0, *...*0, 0, 1)      2",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ test_strings_differ_in_the_middle _*",
            "RaceDetected: outcomes differ across 4 runs *",
            "*outcome   runs",
            "  'aaaa*...*aaa' #1      2",
            "  'aaaa*...*aaa' #2      2",
        ]
    )
    report = load_report(pytester)
    assert {n: t["verdict"] for n, t in report.items()} == {
        "test_equal_reprs": "race",
        "test_long_tuples": "race",
        "test_strings_differ_in_the_middle": "race",
        "test_equal_values_print_differently": "passed",
    }
    assert report["test_equal_reprs"]["histogram"] == [["Same() #1", 2], ["Same() #2", 2]]
    assert report["test_equal_values_print_differently"]["histogram"] == [["1", 4]]


def test_json_distinct_counts_outcomes_not_labels(pytester: pytest.Pytester) -> None:
    """The JSON's and the terminal report's "distinct" count outcomes that print alike separately."""
    pytester.makepyfile(test_alike=PRINT_ALIKE)
    result = run(pytester, "--ipc-report=report.json", "-k", "equal_reprs", timeout=SESSION_TIMEOUT, cache=False)
    result.assert_outcomes(failed=1)
    assert load_report(pytester)["test_equal_reprs"]["distinct"] == 2
