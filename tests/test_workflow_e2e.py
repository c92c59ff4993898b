"""End to end: the workflow with a toy architecture registered from outside the package
(tests/toy_arch.py, loaded through the config key `plugins`: adding an architecture = one file +
its name in the config), then `snakemake --report` rendered in headless Chromium.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def snakemake(*args, cwd: Path, timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(cwd), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def toy_config() -> dict:
    """A complete config (under --directory no default config is merged in): the toy architecture only."""
    grid = {"amb": [3], "feat": [8], "lr": [0.01, 0.003], "warmup": [1]}
    return {
        "architectures": ["toy_ema"],
        "plugins": [str(ROOT / "tests/toy_arch.py")],
        "seeds": [1, 2],
        "test_splits": ["faithful", "heldout"],
        "data": {"train_size": 16, "val_size": 8, "test_size": 8},
        "train": {"device": "cpu", "layers": 1, "batch_size": 8, "eval_every": 1, "test_bs": 8, "progress": "off"},
        "tasks": {"task1": grid, "task2": grid,
                  "task4": {"feat": [8], "lr": [0.01], "warmup": [1], "test_gap": [2]}},
        "resources": {k: {"threads": 1, "mem_mb": 1000, "runtime": 5, "gpu": 0, "retries": 0} for k in ("dataset", "train", "evaluate")},
    }


@pytest.fixture(scope="module")
def chromium() -> str:
    """Headless Chromium for the report check (Debian package `chromium`, installed if absent)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, timeout=900)
        path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is needed to render the report: apt-get install -y chromium")
    return path


REPORT_PROBE = """<script>
window.addEventListener('load', function () {
  var out = document.createElement('div'); out.id = 'figure-check'; document.body.appendChild(out);
  Object.keys(results).forEach(function (path) {
    var r = results[path];
    if (!r.mime_type || r.mime_type.indexOf('image/') !== 0) return;
    var img = new Image();
    img.onload = function () {
      var p = document.createElement('p'); p.className = 'figure-ok'; p.setAttribute('data-path', path);
      p.setAttribute('data-size', img.naturalWidth + 'x' + img.naturalHeight);
      p.setAttribute('data-caption', r.caption.replace(/<[^>]+>/g, '').slice(0, 40)); out.appendChild(p);
    };
    img.onerror = function () { var p = document.createElement('p'); p.className = 'figure-bad'; p.setAttribute('data-path', path); out.appendChild(p); };
    img.src = r.data_uri;
  });
});
</script>
"""


def render_report(chromium: str, report: Path, tmp_path: Path) -> str:
    """The report's DOM after its JavaScript ran, with each embedded figure decoded by the browser."""
    probe = tmp_path / "report_probe.html"
    probe.write_text(report.read_text().replace("</body>", REPORT_PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}",
             "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    out = subprocess.run([chromium, *flags], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
def test_toy_architecture_end_to_end_with_report(tmp_path, chromium):
    config = write_config(tmp_path / "toy.yaml", toy_config())
    run = snakemake("--cores", 2, "--configfile", config, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]

    runs = pd.read_parquet(tmp_path / "results/runs.parquet")
    toy = runs[runs.arch == "toy_ema"]
    assert len(toy[toy.kind == "train"]) == 2 * 2 * 2  # (Task 1, Task 2) x 2 lr x 2 seeds
    assert set(toy.status) == {"completed"} and toy.test_acc.between(0, 1).all()
    assert toy.val_acc.between(0, 1).all()  # every run validated (evaluations inherit it)
    gap = toy[toy.task == "task4"]
    assert gap.test_gap.tolist() == [2.0] * 4 and sorted(gap.test_split) == ["faithful"] * 2 + ["heldout"] * 2
    # the held-out test mode: each trained run also tested on its dataset's held-out twin
    heldout = toy[(toy.kind == "evaluate") & toy.task.isin(["task1", "task2"])]
    assert len(heldout) == 8 and set(heldout.test_split) == {"heldout"} and heldout.test_gap.isna().all()
    trained = toy[toy.kind == "train"].set_index(["task", "lr", "seed"]).test_acc.sort_index()
    tested = heldout.set_index(["task", "lr", "seed"]).test_acc.sort_index()
    assert list(tested.index) == list(trained.index) and (tested != trained).any()  # other samples
    sel = pd.read_csv(tmp_path / "results/tables/selection.csv")
    assert set(sel.arch) == {"toy_ema"} and (sel.n_seeds == 2).all() and set(sel.selected_by) == {"val_acc"}
    assert set(sel.test_split) == {"faithful", "heldout"}
    assert sel.test_ci.notna().all()  # two seeds: a confidence interval
    figures = sorted(p.name for p in (tmp_path / "results/figures").glob("*.png"))
    assert len(figures) == 6 and "task3_distractors.png" not in figures  # no Task 3 in this config
    assert all((tmp_path / "results/figures" / f.replace(".png", ".pdf")).stat().st_size > 1000 for f in figures)
    taxonomy = pd.read_csv(tmp_path / "results/tables/taxonomy.csv")
    assert list(taxonomy.arch) == ["toy_ema"] and taxonomy.model[0].startswith("data-gated")  # its registry summary

    report = snakemake("--report", "report.html", "--configfile", config, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-4000:]
    dom = render_report(chromium, tmp_path / "report.html", tmp_path)
    assert "Snakemake Report" in dom and "Results" in dom
    ok = dict(re.findall(r'class="figure-ok" data-path="results/figures/([^"]+)" data-size="(\d+x\d+)"', dom))
    assert sorted(ok) == figures and 'class="figure-bad"' not in dom
    assert all(int(size.split("x")[0]) > 300 for size in ok.values())
    captions = re.findall(r'data-caption="([^"]+)"', dom)
    assert len(captions) == len(figures) and all(len(c) > 20 for c in captions)


@pytest.mark.slow
def test_a_preempted_training_job_resumes_on_the_retry(tmp_path):
    """SIGTERM to a running training job (what SLURM sends on preemption or time-out): the run
    checkpoints and exits 75, Snakemake retries the job, and the run resumes where it stopped."""
    import psutil

    config = toy_config()
    config.update(seeds=[1], test_splits=["faithful"], data={"train_size": 2400, "val_size": 8, "test_size": 8})
    config["train"].update(eval_every=25)
    config["tasks"] = {"task1": {"amb": [3], "feat": [8], "lr": [0.01], "warmup": [1]}}
    config["resources"]["train"]["retries"] = 1
    target = "results/runs/task1/toy_ema/feat8_amb3_lr0.01_wu1_seed1/metrics.json"
    run_dir = tmp_path / os.path.dirname(target)
    cmd = [sys.executable, "-m", "snakemake", target, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "1",
           "--configfile", str(write_config(tmp_path / "toy.yaml", config))]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        job = None
        for _ in range(600):  # the training job, once it has written its first checkpoint
            job = next((p for p in psutil.Process(proc.pid).children(recursive=True)
                        if "selectivbench.analysis.jobs" in " ".join(p.cmdline())), None)
            if job is not None and (run_dir / "checkpoint.pt").exists():
                break
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        if job is None or not (run_dir / "checkpoint.pt").exists():
            proc.kill()
            pytest.fail("the training job did not start:\n" + proc.communicate()[0][-3000:])
        job.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    log = (run_dir / "train.log").read_text()
    stopped = int(re.search(r"signal 15: stopped at update (\d+)", log)[1])
    assert f"resuming at update {stopped}" in log and "Trying to restart job" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["updates"] == 2400 // 8 > stopped > 0
