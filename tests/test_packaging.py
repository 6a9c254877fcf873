"""The three dependency lists agree: pyproject.toml, the per-rule conda env, and environment.yml."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import REPO


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].strip().lower()


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_rule_environment_matches_pyproject():
    deps = {_name(d) for d in _pyproject()["project"]["dependencies"]}
    env = yaml.safe_load((REPO / "workflows" / "envs" / "benchmark.yaml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert {_name(d) for d in pip} == deps


def test_gpu_environment_installs_the_project_with_cuda_torch():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert any(d.startswith("pytorch-cuda") for d in conda)
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert any(p.startswith("-e .") for p in pip)


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_makefile_pins_the_cpu_torch_wheel():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"TORCH_SPEC \?= torch==\d", makefile)
