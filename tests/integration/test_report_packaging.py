"""The report's JSON Schema is data the product reads at run time: setuptools must ship it in the package."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

from controller.compliance.report import SCHEMA_ID

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]


def test_build_py_copies_the_schema_into_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a wheel (and the Functions deployment package) gets: setuptools' build_py from pyproject.toml.

    It runs on a clean copy of the sources: an egg-info left by an editable install would list the file
    whatever pyproject.toml says.
    """
    source = tmp_path / "source"
    shutil.copytree(ROOT / "controller", source / "controller", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    monkeypatch.chdir(source)
    distribution = Distribution({"script_name": "setup.py"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools calls [tool.setuptools] in pyproject.toml "beta"
        apply_configuration(distribution, source / "pyproject.toml")
    build = distribution.get_command_obj("build_py")
    build.build_lib = str(tmp_path / "build")
    distribution.run_command("build_py")
    package = tmp_path / "build" / "controller" / "compliance"
    assert (package / "report.py").is_file()
    schema = package / "schemas" / "compliance-report-v1.schema.json"
    assert schema.is_file(), "pyproject.toml [tool.setuptools.package-data] must list the report schema"
    assert json.loads(schema.read_text("utf-8"))["$id"] == SCHEMA_ID
