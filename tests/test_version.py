"""The version is written once (obfgrad/__init__.py); the package metadata and the native core read it."""

from pathlib import Path

import pytest

import obfgrad

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_reads_the_version_from_the_package():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "obfgrad.__version__"}
    setuptools_config = pytest.importorskip("setuptools.config.pyprojecttoml")
    assert setuptools_config.read_configuration(ROOT / "pyproject.toml")["project"]["version"] == obfgrad.__version__


def test_the_native_core_carries_the_package_version():
    native = pytest.importorskip("obfgrad._C", reason="native core not built")
    assert native.__version__ == obfgrad.__version__
    assert f"\"{obfgrad.__version__}\"" not in (ROOT / "setup.py").read_text()  # read, never repeated
