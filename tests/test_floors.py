"""tests/floors.py: pyproject's `>=` floors become the pins of `make test-floors`, and nothing else does."""

from __future__ import annotations

from importlib import metadata

import pytest

from tests import floors


def project(*deps: str, dev: tuple[str, ...] = ()) -> dict:
    return {"project": {"dependencies": list(deps), "optional-dependencies": {"dev": list(dev)}}}


def test_every_runtime_dependency_declares_one_floor_inside_its_range():
    declared = floors.load()
    reqs = floors.runtime(declared)
    assert [r.name for r in reqs] == list(floors.floors(declared))
    for req in reqs:
        for op, version in req.specs:
            if op == "<":
                assert floors.release(req.floor) < floors.release(version), req


def test_constraints_pin_each_floor_without_extras():
    text = floors.constraints(project("PyJWT[crypto]>=2.8,<3", "pandas>=3.1,<4", "numpy>=2.0.2"))
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == ["PyJWT==2.8", "pandas==3.1", "numpy==2.0.2"]


def test_the_real_constraints_name_every_dependency():
    declared = floors.load()
    pins = dict(line.split("==") for line in floors.constraints(declared).splitlines()[1:])
    assert pins == floors.floors(declared)
    assert floors.release(pins["tableauserverclient"]) >= (0, 42)  # XMLError (0.34), Server.close() (0.42)


@pytest.mark.parametrize(("text", "name", "specs"), [
    ("PyJWT[crypto]>=2.8,<3", "PyJWT", ((">=", "2.8"), ("<", "3"))),
    ("python-calamine>=0.5.4", "python-calamine", ((">=", "0.5.4"),)),
    ("msal >= 1.33 , < 2 ; python_version >= '3.11'", "msal", ((">=", "1.33"), ("<", "2"))),
    ("dask[distributed]>=2024.1", "dask", ((">=", "2024.1"),)),
])
def test_parse(text, name, specs):
    req = floors.parse(text)
    assert (req.name, req.specs) == (name, specs)


@pytest.mark.parametrize("text", ["pandas", "pandas<4", "pandas==3.1", "pandas>=3,>=3.1"])
def test_a_dependency_without_exactly_one_floor_is_refused(text):
    with pytest.raises(floors.FloorError, match="exactly one '>=' lower bound"):
        floors.floors(project(text))


def test_an_unreadable_specifier_is_refused():
    with pytest.raises(floors.FloorError, match="cannot read the version specifier"):
        floors.parse("pandas>=3.1,banana")


def test_tools_come_from_the_dev_extra_as_declared():
    dev = ("pytest>=8,<10", "pytest-timeout>=2.3", "trustme>=1.1")
    assert floors.tools(project(dev=dev), ["pytest_timeout", "pytest"]) == ["pytest-timeout>=2.3", "pytest>=8,<10"]
    with pytest.raises(floors.FloorError, match="not in the dev extra of pyproject.toml: ruff"):
        floors.tools(project(dev=dev), ["pytest", "ruff"])


@pytest.mark.parametrize(("a", "b", "same"), [
    ("6", "6.0", True), ("0.42", "0.42.0", True), ("2.0.16", "2.0.2", False), ("3.1", "3.1.5", False),
])
def test_release_compares_numbers(a, b, same):
    assert (floors.release(a) == floors.release(b)) is same


def test_check_names_what_is_off_its_floor():
    installed = metadata.version("pytest")
    assert floors.off_floor(project(f"pytest>={installed}")) == []
    assert floors.off_floor(project("pytest>=0.1", "no-such-dist-xq>=1")) == [
        f"pytest: {installed} != 0.1", "no-such-dist-xq: not installed != 1"]


def test_cli(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text('[project]\ndependencies = ["requests>=2.32.2,<3"]\n', encoding="utf-8")
    assert floors.main(["--pyproject", str(good), "constraints"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["requests==2.32.2"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[project]\ndependencies = ["requests"]\n', encoding="utf-8")
    assert floors.main(["--pyproject", str(bad), "constraints"]) == 2
    assert capsys.readouterr().err.strip() == (
        "floors: requests: declare exactly one '>=' lower bound in pyproject.toml")
