"""envs/selectivbench.yaml (the rules' conda env) must match the dependencies of pyproject.toml."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = ROOT / "envs/selectivbench.yaml"
# PyPI name -> conda-forge/bioconda name where they differ (same software, same versions)
CONDA_NAME = {"torch": "pytorch", "matplotlib": "matplotlib-base", "seaborn": "seaborn-base", "snakemake": "snakemake-minimal"}
SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*$")


def parse(spec: str) -> tuple[str, str]:
    name, bound = SPEC.match(spec).groups()
    return name.lower(), bound.replace(" ", "")


def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(parse(d) for d in project["dependencies"])
    wanted = {CONDA_NAME.get(name, name): bound for name, bound in wanted.items()}
    wanted["python"] = project["requires-python"].replace(" ", "")
    env = yaml.safe_load(ENV.read_text())
    assert all(isinstance(d, str) for d in env["dependencies"]), "no pip section: every dependency comes from conda"
    have = dict(parse(d) for d in env["dependencies"])
    assert have == wanted, f"envs/selectivbench.yaml differs from pyproject.toml: missing {set(wanted) - set(have)}, extra {set(have) - set(wanted)}, bounds {[(k, have[k], wanted[k]) for k in set(have) & set(wanted) if have[k] != wanted[k]]}"
    assert "conda-forge" in env["channels"] and "bioconda" in env["channels"]  # snakemake lives on bioconda


def test_every_rule_uses_the_env():
    rules = sorted((ROOT / "workflow/rules").glob("*.smk"))
    text = "\n".join(p.read_text() for p in rules)
    assert 'CONDA_ENV = "../../envs/selectivbench.yaml"' in text  # relative to workflow/rules/
    assert (ROOT / "workflow/rules" / "../../envs/selectivbench.yaml").resolve() == ENV.resolve()
    n_rules = len(re.findall(r"^rule \w+:", text, re.M))
    assert n_rules and text.count("conda:\n        CONDA_ENV") == n_rules
