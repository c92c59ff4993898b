"""`snakemake --configfile config/paper.yaml -n` plans the paper's full grids (spec §9)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def snakemake(*args, cwd: Path, timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(cwd), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    table = output[output.index("Job stats:"):]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.slow
def test_paper_config_plans_the_full_grid(tmp_path):
    out = snakemake("-n", "--quiet", "rules", "--configfile", ROOT / "config/config.yaml", ROOT / "config/paper.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout + out.stderr)
    # spec §9: 10584 + 1512 + 1344 grid points less 216 transformer@960 (skipped, no job)
    assert counts["train_run"] == 13224
    assert counts["evaluate_gap_generalization"] == 448 * 2 * 2  # x 2 warmups (§15.7) x 2 test splits
    assert counts["materialize_dataset"] == 7 * 4 * 2 and counts["sample_grammar"] == 28
