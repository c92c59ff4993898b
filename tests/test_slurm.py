"""`snakemake --profile slurm` on a real single-node SLURM (Debian's slurmctld/slurmd, fake GPUs).

The work is done by .ci/test-slurm.sh (usable without pytest): it starts SLURM, runs the tiny
config/ci-slurm.yaml through the repository's profile, preempts one training and cancels another
while they run, checks outputs, GPU allocation and resumption, and stops the daemons.

Runs only as root, in CI (SELECTIVBENCH_CI=1, where .ci/run installs the SLURM packages) or when
asked for (SELECTIVBENCH_SLURM_TESTS=1, which also installs them with apt): it starts daemons and
writes /etc/slurm. Takes 3-5 minutes on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "test-slurm.sh"

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def skip_reason() -> str | None:
    asked = os.environ.get("SELECTIVBENCH_SLURM_TESTS") == "1"
    if not (asked or os.environ.get("SELECTIVBENCH_CI") == "1"):
        return "set SELECTIVBENCH_SLURM_TESTS=1 to start a local SLURM (root; writes /etc/slurm)"
    if os.geteuid() != 0:
        return "needs root to start the SLURM daemons"
    if not asked and not Path("/usr/sbin/slurmctld").exists():
        return "SLURM packages not installed (slurmctld missing)"
    if not asked and shutil.which("git") is None:
        return "git missing (the test copies the working tree with git ls-files)"
    return None


@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
def test_profile_slurm_runs_tiny_config_with_gpus_and_resumes_stopped_trainings(tmp_path):
    env = dict(os.environ, SLURM_TEST_DIR=str(tmp_path / "slurm"), OMP_NUM_THREADS="1")
    env.pop("SLURM_TEST_KEEP", None)  # always stop the daemons
    # own process group: on a time-out, the script and everything it started get the signal
    proc = subprocess.Popen(
        ["bash", str(SCRIPT)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:  # the script's own timeouts should have fired first
        os.killpg(proc.pid, signal.SIGTERM)  # its trap cancels the jobs and stops the daemons
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            subprocess.run(["bash", str(REPO / ".ci" / "slurm-local.sh"), "stop"], timeout=120)
        pytest.fail(f"{SCRIPT.name} ran over 900 s:\n{(stdout + stderr)[-6000:]}")
    output = stdout + stderr
    assert proc.returncode == 0, f"{SCRIPT.name} exited {proc.returncode}:\n{output[-6000:]}"
    assert "PASSED" in stdout, output[-6000:]
    # the checks the script made, each visible in its output
    assert "got gres:gpu:1 and CUDA_VISIBLE_DEVICES" in stdout
    assert stdout.count("resumed there, completed") == 2
