"""Bad configuration is a clean usage or collection error, never an INTERNALERROR.

Each error names the bad value and where it came from: the option, the ini
key and file, or the test and its marker.  These are pure configuration
checks, so the sessions run in-process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pytest_ipc import config as settings

USAGE_ERROR = pytest.ExitCode.USAGE_ERROR  # 4
INTERRUPTED = pytest.ExitCode.INTERRUPTED  # 2: collection errors stop the session

PLAIN_TEST = """
def test_uses_ipc(ipc_context):
    pass
"""


def assert_clean_error(result: pytest.RunResult, ret: int, *lines: str) -> None:
    """The session ended with ``ret`` and showed ``lines``, with no INTERNALERROR or traceback."""
    assert result.ret == ret
    output = pytest.LineMatcher(result.stdout.lines + result.stderr.lines)
    output.fnmatch_lines(list(lines))
    output.no_fnmatch_line("*INTERNALERROR*")
    output.no_fnmatch_line("*Traceback (most recent call last)*")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--ipc-timeout=-1", "*--ipc-timeout=-1: expected a positive number of seconds, got '-1'"),
        ("--ipc-timeout=abc", "*--ipc-timeout=abc: expected a number of seconds, got 'abc'"),
        ("--ipc-timeout=nan", "*--ipc-timeout=nan: expected a positive number of seconds, got 'nan'"),
        ("--ipc-timeout=1e12", "*--ipc-timeout=1e12: '1e12' seconds is more than the limit of *"),
        (
            "--ipc-start-method=threads",
            "*--ipc-start-method=threads: expected one of fork, spawn, forkserver, all; got 'threads'",
        ),
        ("--ipc-runs=abc", "*--ipc-runs=abc: expected a positive whole number, got 'abc'"),
        ("--ipc-runs=0", "*--ipc-runs=0: expected a positive whole number, got '0'"),
        ("--ipc-seed=-5", "*--ipc-seed=-5: expected a whole number from 0 to 4294967295, got '-5'"),
        ("--ipc-jitter=loud", "*--ipc-jitter=loud: expected off, low, high or a probability from 0 to 1, got 'loud'"),
        ("--ipc-budget=0", "*--ipc-budget=0: expected a positive number of seconds, got '0'"),
    ],
)
def test_bad_option_is_a_usage_error(pytester: pytest.Pytester, option: str, message: str) -> None:
    """A bad --ipc-* option stops the session with exit code 4 and names the option and value."""
    pytester.makepyfile(PLAIN_TEST)
    result = pytester.runpytest(option)
    assert_clean_error(result, USAGE_ERROR, "ERROR: pytest-ipc: " + message.lstrip("*"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "ipc_timeout",
            "nope",
            "*ini key ipc_timeout = 'nope' in pytest.ini: expected a number of seconds, got 'nope'",
        ),
        (
            "ipc_start_method",
            "threads",
            "*ini key ipc_start_method = 'threads' in pytest.ini: expected one of fork, spawn, forkserver, all*",
        ),
        ("ipc_runs", "-3", "*ini key ipc_runs = '-3' in pytest.ini: expected a positive whole number*"),
        ("ipc_jitter", "2", "*ini key ipc_jitter = '2' in pytest.ini: expected off, low, high or a probability*"),
    ],
)
def test_bad_ini_key_is_a_usage_error(pytester: pytest.Pytester, key: str, value: str, message: str) -> None:
    """A bad ipc_* ini key stops the session with exit code 4 and names the key, value and file."""
    pytester.makefile(".ini", pytest=f"[pytest]\n{key} = {value}\n")
    pytester.makepyfile(PLAIN_TEST)
    result = pytester.runpytest()
    assert_clean_error(result, USAGE_ERROR, "ERROR: pytest-ipc: " + message.lstrip("*"))


NATIVE_TOML = pytest.mark.skipif(
    pytest.version_tuple < (9, 2), reason="[tool.pytest] takes union-typed keys from pytest 9.2"
)


@NATIVE_TOML
@pytest.mark.parametrize("jitter", ["0.1", '"0.1"'])
def test_native_toml_takes_numbers_as_numbers(pytester: pytest.Pytester, jitter: str) -> None:
    """In pytest 9's [tool.pytest] table, ipc_runs = 7 is a number, and "7" still works."""
    pytester.makefile(
        ".toml",
        pyproject=(
            f"[tool.pytest]\nipc_runs = 7\nipc_seed = 5\nipc_timeout = 20\nipc_budget = 30.5\nipc_jitter = {jitter}\n"
        ),
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.ipc_race
        def test_race(ipc_outcome):
            ipc_outcome.record(1)
        """
    )
    result = pytester.runpytest("-v", "--ipc-report=report.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pytest-ipc: seed 5, start method *, timeout 20s, runs 7, jitter 0.1"])
    import json

    (test,) = json.loads((pytester.path / "report.json").read_text())["tests"]
    assert test["runs"] == 7


@NATIVE_TOML
@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "ipc_runs = 0",
            "ERROR: pytest-ipc: ini key ipc_runs = 0 in pyproject.toml: expected a positive whole number*",
        ),
        ("ipc_runs = 7.5", "ERROR: pytest-ipc: ini key ipc_runs = 7.5 in pyproject.toml: expected a positive whole*"),
        ("ipc_jitter = nan", "ERROR: pytest-ipc: ini key ipc_jitter = nan in pyproject.toml: expected off, low, high*"),
        ("ipc_timeout = inf", "ERROR: pytest-ipc: ini key ipc_timeout = inf in pyproject.toml: *"),
        ("ipc_seed = -1", "ERROR: pytest-ipc: ini key ipc_seed = -1 in pyproject.toml: expected a whole number*"),
        # Not a type the key takes: pytest's own usage error, as clean.
        ("ipc_runs = true", "ERROR: *pyproject.toml: config option 'ipc_runs' expects one of *, got bool: True"),
        (
            "ipc_runs = [7]",
            "ERROR: *pyproject.toml: config option 'ipc_runs' expects one of *, got list: ?7?",
        ),  # ([...] is a class to fnmatch)
    ],
)
def test_bad_native_toml_value_is_a_usage_error(pytester: pytest.Pytester, line: str, message: str) -> None:
    pytester.makefile(".toml", pyproject=f"[tool.pytest]\n{line}\n")
    pytester.makepyfile(PLAIN_TEST)
    result = pytester.runpytest()
    assert_clean_error(result, USAGE_ERROR, message)


def test_option_overrides_a_bad_ini_key(pytester: pytest.Pytester) -> None:
    """The command line wins over the ini file, so a bad ini value it replaces is never read."""
    pytester.makefile(".ini", pytest="[pytest]\nipc_timeout = nope\n")
    pytester.makepyfile(
        """
        def test_timeout(ipc_workers):
            assert ipc_workers.timeout == 7.5
        """
    )
    result = pytester.runpytest("--ipc-timeout=7.5")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("mark", "fixture", "message"),
    [
        (
            "ipc_timeout()",
            "ipc_context",
            "*@pytest.mark.ipc_timeout(): missing a required argument: 'seconds' (it takes: seconds)",
        ),
        (
            "ipc_timeout(-1)",
            "ipc_context",
            "*@pytest.mark.ipc_timeout(-1): expected a positive number of seconds, got -1",
        ),
        ("ipc_timeout('x')", "ipc_context", "*@pytest.mark.ipc_timeout('x'): expected a number of seconds, got 'x'"),
        ("ipc_timeout(1, 2)", "ipc_context", "*@pytest.mark.ipc_timeout(1, 2): too many positional arguments*"),
        (
            "ipc_start_methods()",
            "ipc_context",
            "*@pytest.mark.ipc_start_methods(): name at least one of fork, spawn, forkserver",
        ),
        (
            "ipc_start_methods('threads')",
            "ipc_context",
            "*@pytest.mark.ipc_start_methods('threads'): expected one of fork, spawn, forkserver, all; got 'threads'",
        ),
        (
            "ipc_start_methods('fork')",
            "tmp_path",
            "*@pytest.mark.ipc_start_methods needs the test to use a pytest-ipc fixture*",
        ),
        (
            "ipc_race(runs=0)",
            "shared_value",
            "*@pytest.mark.ipc_race(runs=0): runs: expected a positive whole number, got 0",
        ),
        (
            "ipc_race(runs='many')",
            "shared_value",
            "*@pytest.mark.ipc_race(runs='many'): runs: expected a positive whole number, got 'many'",
        ),
        (
            "ipc_race(budget=-1)",
            "shared_value",
            "*@pytest.mark.ipc_race(budget=-1): budget: expected a positive number of seconds, got -1",
        ),
        (
            "ipc_race(bogus=1)",
            "shared_value",
            "*@pytest.mark.ipc_race(bogus=1): got an unexpected keyword argument 'bogus'"
            " (it takes: runs, budget, expect, jitter, all_runs)",
        ),
    ],
)
def test_bad_marker_is_a_collection_error(pytester: pytest.Pytester, mark: str, fixture: str, message: str) -> None:
    """A marker with wrong arguments is a collection error naming the test, the marker and the value."""
    pytester.makepyfile(
        test_marked=f"""
        import pytest

        @pytest.mark.{mark}
        def test_marked({fixture}):
            pass
        """
    )
    result = pytester.runpytest()
    assert_clean_error(result, INTERRUPTED, "pytest-ipc: test_marked.py::test_marked: " + message.lstrip("*"))
    result.stdout.fnmatch_lines(["*ERROR collecting test_marked.py*", "*Interrupted: 1 error during collection*"])
    result.stdout.no_fnmatch_line("*During handling of the above exception*")


@pytest.mark.parametrize(
    ("fixture", "param", "message"),
    [
        ("shared_value", "42", "indirect parameter 42 of shared_value: expected a typecode, a (typecode, value)*"),
        ("shared_value", "('d',)", "indirect parameter ('d',) of shared_value: expected a typecode*"),
        (
            "shared_value",
            "{'typecode': 'd', 'size': 3}",
            "indirect parameter {'typecode': 'd', 'size': 3} of shared_value: unknown keys ?'size'?*",
        ),
        (
            "shared_value",
            "{'lock': 'yes'}",
            "indirect parameter {'lock': 'yes'} of shared_value: lock must be True or False, got 'yes'",
        ),
        (
            "shared_value",
            "('s', 'text')",
            "*indirect parameter ('s', 'text') of shared_value: unknown typecode 's'*There is no string typecode*",
        ),
        ("shared_array", "'z'", "*indirect parameter 'z' of shared_array: unknown typecode 'z'*"),
        ("pipe_pair", "'one-way'", "*indirect parameter 'one-way' of pipe_pair: expected True (duplex) or False*"),
    ],
)
def test_bad_indirect_param_is_a_collection_error(
    pytester: pytest.Pytester, fixture: str, param: str, message: str
) -> None:
    """A bad indirect parameter of a pytest-ipc fixture is a collection error naming the test and the value."""
    pytester.makepyfile(
        test_param=f"""
        import pytest

        @pytest.mark.parametrize("{fixture}", [{param}], indirect=True)
        def test_param({fixture}):
            pass
        """
    )
    result = pytester.runpytest()
    assert_clean_error(result, INTERRUPTED, "pytest-ipc: test_param.py::test_param: " + message.lstrip("*"))
    result.stdout.no_fnmatch_line("*During handling of the above exception*")


def test_direct_parametrize_and_overriding_fixture_are_left_alone(pytester: pytest.Pytester) -> None:
    """Only parameters that reach pytest-ipc's own fixtures are checked: direct values and overrides pass."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture
        def shared_array(request):
            return request.param * 2

        @pytest.mark.parametrize("shared_value", [5])
        def test_direct(shared_value):
            assert shared_value == 5

        @pytest.mark.parametrize("shared_array", ["zz"], indirect=True)
        def test_overridden(shared_array):
            assert shared_array == "zzzz"
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)


def test_value_the_typecode_cannot_hold_fails_naming_both(pytester: pytest.Pytester) -> None:
    """A valid typecode with a value it cannot hold fails at set-up, naming the typecode and the value."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("shared_value", [("d", "zero")], indirect=True)
        def test_param(shared_value):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*shared_value: cannot make a shared 'd' from 'zero': TypeError:*"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*During handling of the above exception*")


# -- the parsers themselves, fuzzed --------------------------------------------

PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "positive_seconds": settings.positive_seconds,
    "positive_int": settings.positive_int,
    "jitter": settings.jitter,
    "seed_value": settings.seed_value,
    "start_method": settings.start_method,
}


def _valid(name: str, value: Any) -> bool:
    if name == "positive_seconds":
        return isinstance(value, float) and 0 < value <= settings.MAX_SECONDS
    if name == "positive_int":
        return type(value) is int and value >= 1
    if name == "jitter":
        return isinstance(value, float) and 0 <= value <= 1 and not math.isnan(value)
    if name == "seed_value":
        return type(value) is int and 0 <= value <= settings.MAX_SEED
    return value in (*settings.START_METHODS, "all")


option_text = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\s*[-+]?[0-9_.eE]{0,12}\s*", fullmatch=True),
    st.sampled_from(["off", "low", "HIGH", "none", "inf", "-inf", "nan", "1e400", "0", "-0", "0.0", "fork "]),
)


@given(name=st.sampled_from(sorted(PARSERS)), text=option_text)
@example(name="positive_seconds", text="1e400")
@example(name="positive_int", text="9" * 5000)
@example(name="jitter", text="nan")
def test_parsers_accept_valid_values_or_name_the_input(name: str, text: str) -> None:
    """Every option string either parses to a valid value or raises SettingError quoting it."""
    where = "--ipc-example=" + text
    try:
        value = PARSERS[name](text, where)
    except settings.SettingError as exc:
        assert str(exc).startswith(where + ": ")
        assert settings.safe_repr(text) in str(exc)
    else:
        assert _valid(name, value), value
