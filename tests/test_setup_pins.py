"""`make setup` installs from constraints.txt, which pins the whole resolved environment: a
requirement or a package missing there makes pip search the dependency graph again, which
it cannot finish for the Google Cloud and moto packages (`make lock` records the result)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
#: installed by the venv itself or the project, not by its requirements
NOT_PINNED = {"pip", "setuptools", "wheel", "capfilt-curation"}


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[_name(name)] = version
    return pins


def test_every_requirement_is_pinned_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pins = _pins()
    for text in requirements:
        requirement = Requirement(text)
        name = _name(requirement.name)
        assert name in pins, f"{name} is not in constraints.txt: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {requirement}"
        )


def test_the_installed_environment_is_pinned() -> None:
    pins = _pins()
    installed = {_name(d.metadata["Name"]) for d in metadata.distributions()}
    missing = sorted(installed - set(pins) - NOT_PINNED)
    assert not missing, f"installed but not in constraints.txt (run `make lock`): {missing}"


def test_runtime_floors_are_the_tested_versions() -> None:
    """Each runtime requirement's floor is the version the suite runs with, to its precision
    (numpy>=2.4 is tested with 2.4.x): a lower floor would promise versions nobody tested."""
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    for text in project["dependencies"]:
        requirement = Requirement(text)
        (floor,) = [s.version for s in requirement.specifier if s.operator == ">="]
        tested = Version(pins[_name(requirement.name)]).release
        wanted = Version(floor).release
        assert tested[: len(wanted)] == wanted, f"{requirement} is tested with {tested}"
