"""The Snakemake workflow: plans, config errors, lint/format, the job runner, and an end-to-end run
with a toy architecture registered from outside the package, down to the HTML report rendered in
headless Chromium.

Every workflow run happens in a temporary working directory (`--directory`), so the repository's
results/ is never touched.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from selectivbench.analysis import jobs

ROOT = Path(__file__).resolve().parents[1]
QUICK = yaml.safe_load((ROOT / "config/config.yaml").read_text())
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def snakemake(*args, cwd: Path, timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(cwd), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table of a dry run."""
    table = output[output.index("Job stats:"):]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_quick_config_plans_every_architecture_and_task(tmp_path):
    out = snakemake("-n", "--quiet", "rules", "--configfile", ROOT / "config/config.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout + out.stderr)
    archs, t1 = QUICK["architectures"], QUICK["tasks"]["task1"]
    per_arch = len(t1["amb"]) * len(t1["feat"]) + sum(len(QUICK["tasks"][t]["feat"]) for t in ("task2", "task3"))
    assert counts["train_run"] == len(archs) * per_arch * len(QUICK["seeds"])
    assert counts["evaluate_gap_generalization"] == len(archs) * len(QUICK["tasks"]["task4"]["test_gap"]) * len(QUICK["test_splits"])
    figures = [r for r in counts if r.startswith("draw_")]
    assert len(figures) == 7 and counts["aggregate_runs"] == counts["select_hyperparameters"] == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["tasks"]["task1"].update(lr=["5e-4"]), "config key 'tasks.task1.lr[0]': '5e-4' is not of type 'number'"),
        (lambda c: c.update(architectures=["gla", "mamba3"]), "config key 'architectures[1]': unknown architecture 'mamba3'"),
        (lambda c: c["train"].update(batch_size=0), "config key 'train': config key 'batch_size' must be >= 1"),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, edit, message):
    config = copy.deepcopy(QUICK)
    edit(config)
    out = snakemake("--cores", 1, "--configfile", write_config(tmp_path / "bad.yaml", config), cwd=tmp_path)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_lint_and_format(tmp_path):
    lint = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    snakefmt = shutil.which("snakefmt", path=os.path.dirname(sys.executable)) or shutil.which("snakefmt")
    fmt = subprocess.run([snakefmt, "--check", "Snakefile", "workflow/"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert fmt.returncode == 0, fmt.stderr


@pytest.mark.slow
def test_paper_config_plans_the_full_grid(tmp_path):
    out = snakemake("-n", "--quiet", "rules", "--configfile", ROOT / "config/config.yaml", ROOT / "config/paper.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout + out.stderr)
    # spec §9: 10584 + 1512 + 1344 grid points less 216 transformer@960 (skipped, no job)
    assert counts["train_run"] == 13224
    assert counts["evaluate_gap_generalization"] == 448 * 2 * 2  # x 2 warmups (§15.7) x 2 test splits
    assert counts["materialize_dataset"] == 7 * 4 * 2 and counts["sample_grammar"] == 28


# --- the job runner: what a failure leaves behind -------------------------------------------------

COMMAND = """
import os, sys
def cli_main(argv):
    out = argv[argv.index("--out") + 1]
    mode = open(os.path.join(out, "mode")).read()
    if mode == "crash":
        raise RuntimeError("CUDA out of memory (simulated)")
    if mode == "interrupted":
        return 75
    if mode == "bad":
        print("error: config key 'lr' must be > 0", file=sys.stderr)
        return 2
    open(os.path.join(out, "metrics.json"), "w").write('{"status": "completed"}')
    return 0
"""


@pytest.fixture
def command(tmp_path, monkeypatch):
    """A command module with cli_main, as selectivbench.train has, whose outcome a file decides."""
    (tmp_path / "fake_command.py").write_text(COMMAND)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    out.mkdir()
    return out


@pytest.mark.parametrize("mode, codes, recorded", [
    ("crash", [1, 0], True),  # retried once, the second failure is recorded and the job succeeds
    ("interrupted", [75, 75], False),  # preemption: never recorded, the rerun resumes
    ("bad", [2, 2], False),  # bad input: fails loudly
])
def test_job_runner_records_only_the_last_genuine_failure(command, mode, codes, recorded):
    (command / "mode").write_text(mode)
    metrics = str(command / "metrics.json")
    got = [jobs.run_job("fake_command", ["--out", str(command)], metrics, attempts=2) for _ in codes]
    assert got == codes
    assert os.path.exists(metrics) == recorded
    if recorded:
        m = json.loads(Path(metrics).read_text())
        assert m["status"] == "failed" and "CUDA out of memory" in m["error"] and m["failures"] == 2
        assert not (command / "failures.txt").exists()  # a forced rerun gets its attempts again


def test_evaluations_of_a_failed_run_are_recorded_without_running(command, tmp_path):
    (command / "metrics.json").write_text('{"status": "failed", "error": "boom"}')
    out = tmp_path / "eval"
    jobs.test_other_splits(str(command), [(str(tmp_path / "data"), str(out))])
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "failed" and "source run" in m["error"]


# --- end to end ----------------------------------------------------------------------------------


def toy_config() -> dict:
    """A complete config (no default merged under --directory): the toy architecture + a paper one."""
    grid = {"amb": [3], "feat": [8], "lr": [0.01, 0.003], "warmup": [1]}
    return {
        "architectures": ["toy_ema", "gla"],
        "plugins": [str(ROOT / "tests/toy_arch.py")],
        "seeds": [1, 2],
        "test_splits": ["faithful"],
        "data": {"train_size": 16, "val_size": 8, "test_size": 8},
        "train": {"device": "cpu", "layers": 1, "batch_size": 8, "eval_every": 1, "test_bs": 8, "progress": "off"},
        "tasks": {"task1": {**grid, "amb": [2, 3]}, "task2": grid,
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
    assert len(toy[toy.kind == "train"]) == (2 + 1) * 2 * 2  # (2 amb Task 1 + Task 2) x 2 lr x 2 seeds
    assert set(toy.status) == {"completed"} and toy.test_acc.between(0, 1).all()
    assert toy[toy.task == "task4"].test_gap.tolist() == [2.0, 2.0]
    sel = pd.read_csv(tmp_path / "results/tables/selection.csv")
    assert set(sel.arch) == {"toy_ema", "gla"} and (sel.n_seeds == 2).all()
    assert sel.test_ci.notna().all()  # two seeds: a confidence interval
    figures = sorted(p.name for p in (tmp_path / "results/figures").glob("*.png"))
    assert len(figures) == 6 and "task3_distractors.png" not in figures  # no Task 3 in this config
    assert all((tmp_path / "results/figures" / f.replace(".png", ".pdf")).stat().st_size > 1000 for f in figures)
    taxonomy = pd.read_csv(tmp_path / "results/tables/taxonomy.csv")
    assert list(taxonomy.arch) == ["toy_ema", "gla"]

    report = snakemake("--report", "report.html", "--configfile", config, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-4000:]
    dom = render_report(chromium, tmp_path / "report.html", tmp_path)
    assert "Snakemake Report" in dom and "Results" in dom
    ok = dict(re.findall(r'class="figure-ok" data-path="results/figures/([^"]+)" data-size="(\d+x\d+)"', dom))
    assert sorted(ok) == figures and 'class="figure-bad"' not in dom
    assert all(int(size.split("x")[0]) > 300 for size in ok.values())
    captions = re.findall(r'data-caption="([^"]+)"', dom)
    assert len(captions) == len(figures) and all(len(c) > 20 for c in captions)
