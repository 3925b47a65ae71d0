"""The conda environment, the pip extras, the README and CI agree with each other."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {_name(r): r.replace(" ", "") for r in reqs}


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_reqs = {_name(r): r.replace(" ", "") for r in pip if not r.startswith("-e")}
    assert conda_reqs == _pyproject_requirements()
    assert "python=3.11" in env["dependencies"]


def test_torch_range_admits_the_local_cpu_build():
    torch_req = _pyproject_requirements()["torch"]
    assert ">=2.1" in torch_req and "<2.15" in torch_req  # 2.13.0 (the CPU wheel here) fits


def _readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```", text, re.S)
    assert match, f"README has no {marker} block"
    return match.group(1).strip()


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    demo, test = _readme_block("demo-command"), _readme_block("test-command")
    assert len(demo.splitlines()) == 1 and len(test.splitlines()) == 1
    assert "zsvss segment" in demo and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci  # .ci/run extracts and runs the README's command verbatim


def test_console_script_and_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["zsvss"] == "zsvss_nb.run.cli:main"
    assert {"notebooks", "test", "distributed"} <= set(project["optional-dependencies"])
