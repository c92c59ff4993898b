"""Planning, config validation, aggregation, selection, tables and figures of the workflow.

The aggregation tests write per-run directories (metrics.json, evals.csv, as `selectivbench
train` writes them) with chosen accuracies, so the expected selection is known exactly.
"""

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from selectivbench.analysis import aggregate, figures, plan, select, tables
from selectivbench.analysis.workflow_config import ConfigError, check

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")
PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
QUICK = yaml.safe_load((ROOT / "config/config.yaml").read_text())
PAPER_ARCHS = ["mamba", "mamba2", "gla", "delta_net", "gated_delta_net", "gated_delta_product", "transformer"]


def transformer_skips_960(arch, feat):
    """Spec §10.3: only the transformer skips a size (960)."""
    return None if (arch == "transformer" and feat == 960) else feat


def validated(config):
    return check(copy.deepcopy(config), SCHEMA)


# --- the grid ------------------------------------------------------------------------------


def test_paper_grid_matches_spec_section_9():
    p = plan.plan(validated(PAPER), model_width=transformer_skips_960)
    by_task = {t: [r for r in p.runs if r.task == t] for t in plan.TRAIN_TASKS}
    # spec §9 run counts, skipped transformer@960 included
    assert len(by_task["task1"]) == 7 * 9 * 7 * 4 * 3 * 2 == 10584
    assert len(by_task["task2"]) == 1512 and len(by_task["task3"]) == 1344
    assert sum(r.skipped for r in p.runs) == (7 + 1 + 1) * 4 * 3 * 2  # transformer@960 in 7+1+1 (task, amb) slices
    assert all(r.arch == "transformer" and r.feat == 960 for r in p.runs if r.skipped)
    figs = plan.figure_runs(PAPER, p)
    assert len(figs["task1_model_size"]) == 1512  # the amb-40 slice of Task 1 (spec §9 note)
    gap = figs["task4_gap_generalization"]
    # 448 reference evaluations (model, feat, lr, seed, test_dur) x 2 warmups (§15.7) x 2 test splits
    assert len(gap) == 448 * 2 * 2
    assert {e.run.task for e in gap} == {"task2"} and {e.test_gap for e in gap} == {1.0, 2.0, 5.0, 10.0}
    assert len(p.datasets) == 7 * 4 * 2 and len(p.grammars) == 28  # amb 40 shared by all tasks


def test_paths_and_formatting():
    r = plan.Run("task2", "gla", 256, 40, 5e-4, 476, 3)
    assert r.dir == "results/runs/task2/gla/feat256_amb40_lr0.0005_wu476_seed3"
    e = plan.Evaluation("task4", r, "heldout", 10.0)
    assert e.dir == "results/evals/task4/heldout/gla/feat256_amb40_lr0.0005_wu476_seed3_gap10"
    assert plan.Evaluation("task2", r, "heldout").dir == "results/evals/task2/heldout/gla/feat256_amb40_lr0.0005_wu476_seed3"
    assert [plan.fmt(x) for x in (1e-3, 2e-3, 0.5, 1000, 2.0)] == ["0.001", "0.002", "0.5", "1000", "2"]


# --- config validation names the key ----------------------------------------------------------


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["tasks"]["task1"].update(lr=["5e-4"]), "tasks.task1.lr[0]"),  # YAML reads 5e-4 as a string
        (lambda c: c["tasks"]["task2"].update(feat=[0]), "tasks.task2.feat[0]"),
        (lambda c: c.update(seeds=[0]), "seeds[0]"),
        (lambda c: c.update(test_splits=["heldout", "random"]), "test_splits[1]"),
        (lambda c: c["data"].pop("train_size"), "data"),
        (lambda c: c.update(sedes=[1]), "<top level>"),
        (lambda c: c["resources"]["train"].update(retries=-1), "resources.train.retries"),
        (lambda c: c["tasks"]["task4"].update(feat=[999]), "tasks.task4.feat[0]"),
        (lambda c: c["train"].update(seed=3), "train.seed"),
        (lambda c: c["train"].update(layres=2), "'train'"),
        (lambda c: c["tasks"]["task3"].update(set={"noise": -1}), "'train' + 'tasks.task3.set'"),
        (lambda c: c.update(plugins=["tests/no_such_file.py"]), "plugins[0]"),
    ],
)
def test_bad_values_fail_naming_the_key(edit, key):
    config = copy.deepcopy(QUICK)
    edit(config)
    with pytest.raises(ConfigError) as err:
        check(config, SCHEMA, registered=lambda c: PAPER_ARCHS)
    assert f"config key {key}" in str(err.value) or f"config key '{key}'" in str(err.value)


def test_unknown_architecture_is_named_with_the_registered_ones():
    config = copy.deepcopy(QUICK)
    config["architectures"] = ["gla", "mamba3"]
    with pytest.raises(ConfigError, match=r"architectures\[1\]': unknown architecture 'mamba3'; registered: .*gla"):
        check(config, SCHEMA, registered=plan.registered_architectures)


def test_defaults_are_filled_and_shared_defaults_are_copies():
    config = {"architectures": ["gla"], "seeds": [1], "data": {"train_size": 8},
              "tasks": {"task1": {"amb": [3], "feat": [8], "lr": [0.001], "warmup": [1]}}}
    check(config, SCHEMA)
    assert config["test_splits"] == ["faithful"] and config["plugins"] == []
    assert config["data"] == {"train_size": 8, "val_size": 1000, "test_size": 1000}
    assert config["resources"]["train"] == {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": 0, "gpu_mem_mb": 0, "retries": 0}
    assert config["selection"]["confidence"] == 0.95
    assert (config["results_dir"], config["seed_major"], config["from_rows"]) == ("results", False, False)
    assert config["tasks"]["task1"]["arch_set"] == {} and config["tasks"]["task1"]["priority"] == 0
    config["train"]["x"] = 1
    assert "x" not in config["tasks"]["task1"]["set"]


def test_paper_config_sets_every_key_of_the_quick_config():
    """Snakemake merges --configfile over config/config.yaml: nothing of the quick setting may leak."""

    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict) and k not in ("train", "set"):
                out |= keys(v, prefix + k + ".")
        return out

    assert keys(QUICK) <= keys(PAPER)
    assert set(QUICK["train"]) <= set(PAPER["train"])  # train keys are merged key by key


# --- selection -------------------------------------------------------------------------------


def test_t_quantiles_match_tables():
    for p, df, expected in [(0.975, 1, 12.7062), (0.975, 3, 3.1824), (0.975, 9, 2.2622), (0.95, 4, 2.1318)]:
        assert select.t_quantile(p, df) == pytest.approx(expected, abs=2e-4)


def test_mean_ci():
    mean, half, n = select.mean_ci([0.5, 0.6, 0.7, math.nan, None])
    assert (mean, n) == (pytest.approx(0.6), 3)
    assert half == pytest.approx(4.3027 * 0.1 / math.sqrt(3), abs=1e-4)  # t(0.975, 2) = 4.3027
    assert select.mean_ci([0.4])[1] != select.mean_ci([0.4])[1]  # one seed: no interval (NaN)


def runs_frame(rows):
    base = dict(kind="train", task="task1", arch="gla", feat=256, amb=40, test_split="faithful", test_gap=math.nan,
                status="completed", val_acc=math.nan, num_parameters=4722000)
    return pd.DataFrame([{**base, **r} for r in rows]).reindex(columns=aggregate.COLUMNS)


def test_selection_uses_validation_and_keeps_the_authors_rule():
    rows = []
    for seed, (va, ta, vb, tb) in enumerate([(0.9, 0.70, 0.8, 0.75), (0.8, 0.60, 0.7, 0.80)], start=1):
        rows += [dict(lr=1e-3, warmup=476, seed=seed, val_acc=va, test_acc=ta),
                 dict(lr=2e-3, warmup=476, seed=seed, val_acc=vb, test_acc=tb)]
    sel = select.select(runs_frame(rows)).iloc[0]
    assert sel["selected_by"] == select.VAL_RULE
    assert (sel["lr"], sel["test_mean"]) == (1e-3, pytest.approx(0.65))  # best validation
    assert sel["test_ci"] == pytest.approx(12.7062 * math.sqrt(0.005) / math.sqrt(2), abs=1e-3)
    assert (sel["lr_authors"], sel["test_mean_authors"]) == (2e-3, pytest.approx(0.775))  # best test


def test_selection_falls_back_and_counts_failed_and_diverged_runs():
    rows = [dict(lr=1e-3, warmup=476, seed=1, test_acc=0.5), dict(lr=1e-3, warmup=476, seed=2, test_acc=0.7),
            dict(lr=2e-3, warmup=476, seed=1, test_acc=0.9, status="diverged"),
            dict(lr=2e-3, warmup=476, seed=2, test_acc=math.nan, status="failed")]
    sel = select.select(runs_frame(rows)).iloc[0]
    assert sel["selected_by"] == select.FALLBACK_RULE
    assert (sel["lr"], sel["test_mean"], sel["n_ok"]) == (2e-3, pytest.approx(0.9), 1)  # the failed seed is not averaged
    assert (sel["n_diverged"], sel["n_failed"], sel["n_runs"]) == (1, 1, 4)


def test_selection_keeps_groups_where_nothing_finished():
    rows = [dict(arch="transformer", feat=960, lr=1e-3, warmup=476, seed=1, status="skipped", test_acc=math.nan),
            dict(arch="mamba", feat=256, lr=1e-3, warmup=476, seed=1, status="failed", test_acc=math.nan)]
    sel = select.select(runs_frame(rows)).set_index("arch")
    assert sel.loc["transformer", "selected_by"] == "skipped"
    assert sel.loc["mamba", "selected_by"] == "none (no finished run)" and sel.loc["mamba", "n_failed"] == 1


# --- aggregation of real run directories ----------------------------------------------------------


def tiny_config(**over):
    config = {"architectures": ["gla", "transformer"], "seeds": [1, 2], "test_splits": ["faithful", "heldout"],
              "data": {"train_size": 8},
              "tasks": {"task2": {"amb": [3], "feat": [8, 960], "lr": [0.001], "warmup": [1]},
                        "task4": {"feat": [8], "lr": [0.001], "warmup": [1], "test_gap": [2]}}}
    config.update(over)
    return check(config, SCHEMA)


def write_run(run_dir: Path, metrics: dict, curve: list[float] | None = None):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if curve:
        pd.DataFrame({"eval": range(len(curve)), "samples": [64 * (i + 1) for i in range(len(curve))], "test_acc": curve}).to_csv(
            run_dir / "evals.csv", index=False)


def test_aggregate_keeps_every_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = plan.plan(tiny_config(), model_width=transformer_skips_960)
    live = [r for r in p.runs if not r.skipped]
    for i, r in enumerate(live):
        if r.arch == "gla" and r.seed == 2:
            write_run(Path(r.dir), {"status": "failed", "error": "CUDA out of memory"})
            continue
        if r.arch == "transformer" and r.seed == 2:
            continue  # never ran: "missing"
        write_run(Path(r.dir), {"status": "completed", "final_test_acc": 0.5 + i / 100, "val_acc": 0.4, "num_parameters": 1000 + i,
                                "wall_s": 3600.0, "device": "NVIDIA H100", "config_hash": f"h{i}",
                                "dataset": {"grammar": "abc"}}, curve=[0.1, 0.3])
        Path(r.dir, "config.yaml").write_text(f"config_hash: h{i}\narch: {r.arch}\nlayers: 8\n")
    for e in p.evaluations:
        if Path(e.run.dir, "metrics.json").exists() and "failed" not in Path(e.run.dir, "metrics.json").read_text():
            # as `selectivbench evaluate` writes it: the gap tested, also for another split's pass (task2: 1.0)
            write_run(Path(e.dir), {"test_acc": 0.25, "test_gap": e.test_gap or 1.0, "wall_s": 7.0, "device": "cpu (1 threads)",
                                    "run_status": "completed", "test_split": e.split})
    df = aggregate.results_table(p)
    assert len(df) == len(p.runs) + len(p.evaluations)
    status = df[df.kind == "train"].groupby(["arch", "feat", "seed"])["status"].first()
    assert status[("transformer", 960, 1)] == "skipped" and status[("gla", 8, 2)] == "failed"
    assert status[("transformer", 8, 2)] == "missing" and status[("gla", 8, 1)] == "completed"
    done = df[(df.kind == "train") & (df.status == "completed")].iloc[0]
    assert done["gpu_hours"] == pytest.approx(1.0) and done["grammar"] == "abc"
    assert json.loads(done["config"])["layers"] == 8 and json.loads(done["config"])["arch"] == done["arch"]
    gap = df[(df.task == "task4") & (df.status == "completed")]
    assert len(gap) and (gap["val_acc"] == 0.4).all() and (gap["test_gap"] == 2.0).all()  # inherits the run's val_acc
    assert (gap["gpu_hours"] == 0).all()  # CPU time is not GPU time
    heldout = df[(df.kind == "evaluate") & (df.task == "task2")]
    assert set(heldout["test_split"]) == {"heldout"}
    assert heldout["test_gap"].isna().all()  # the run's own test condition, as on its training row: same figure panels
    curves = aggregate.training_curves(p)
    assert set(curves["arch"]) == {"gla", "transformer"} and len(curves) == 3 * 2  # gla@8, gla@960, transformer@8 (seed 1)
    out = tmp_path / "runs.parquet"
    aggregate.write_results(p, str(out), str(tmp_path / "runs.csv"), str(tmp_path / "curves.parquet"))
    assert pd.read_parquet(out).shape == df.shape


# --- tables and figures -----------------------------------------------------------------------------


def test_taxonomy_covers_the_paper_architectures():
    tax = tables.taxonomy_table(PAPER_ARCHS + ["toy_ema"], {"toy_ema": "data-gated EMA"})
    assert list(tax["arch"]) == PAPER_ARCHS + ["toy_ema"]
    row = tax.set_index("arch").loc["delta_net"]
    assert row["in-state channel mixing"] == "yes" and row["fast forgetting"] == "no decay gate"
    assert tax.set_index("arch").loc["toy_ema", "model"] == "data-gated EMA"


def test_parameter_counts_match_spec_section_10_4():
    counts = tables.parameter_counts(["gla", "transformer"], [256, 960], amb=40).set_index(["arch", "feat"])
    assert counts.loc[("gla", 256), "params_M"] == pytest.approx(4.722, abs=1e-3)
    assert counts.loc[("gla", 960), "params_M"] == pytest.approx(60.955, abs=1e-3)
    assert math.isnan(counts.loc[("transformer", 960), "params_M"])
    wide = tables.parameter_table(counts.reset_index())
    assert wide.set_index("feat").loc[960, "transformer"] == "—"


def test_markdown_table():
    md = tables.to_markdown(pd.DataFrame({"a": [1, 2], "b": [0.5, math.nan], "c": ["x|y", None]}))
    assert md.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1 | 0.5000 | x\\|y |", "| 2 | — | — |"]


def is_png(path):
    return Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def is_pdf(path):
    return Path(path).read_bytes()[:5] == b"%PDF-"


def test_accuracy_figures_from_a_selection(tmp_path):
    rows = []
    for task, amb_list in (("task1", [20, 40]), ("task2", [40])):
        for arch in ("gla", "mamba"):
            for amb in amb_list:
                for feat in (256, 512):
                    status = "failed" if (arch == "mamba" and feat == 512) else "completed"
                    for seed in (1, 2):
                        for split in ("faithful", "heldout") if task == "task2" else ("faithful",):
                            acc = math.nan if status == "failed" else 0.3 + feat / 2000 + seed / 100 - (split == "heldout") / 10
                            rows.append(dict(task=task, arch=arch, amb=amb, feat=feat, lr=1e-3, warmup=476, seed=seed,
                                             status=status, test_acc=acc, num_parameters=feat * 1000, test_split=split))
    sel = select.select(runs_frame(rows))
    assert (sel["selected_by"] == "none (no finished run)").sum() == 4  # drawn as red × at 0
    assert set(sel[sel.task == "task2"].test_split) == {"faithful", "heldout"}  # one row of panels each
    figures.accuracy_vs_ambiguity(sel, str(tmp_path / "a.pdf"), str(tmp_path / "a.png"))
    figures.accuracy_vs_size(sel, "task2", str(tmp_path / "b.pdf"), str(tmp_path / "b.png"), "Task 2")
    figures.accuracy_vs_gap(sel, str(tmp_path / "c.pdf"), str(tmp_path / "c.png"))  # no Task 4 rows: a placeholder
    for name in "abc":
        assert is_pdf(tmp_path / f"{name}.pdf") and is_png(tmp_path / f"{name}.png")


def png_size(path) -> tuple[int, int]:
    head = Path(path).read_bytes()[16:24]
    return int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")


def test_both_test_modes_get_their_own_row_of_panels(tmp_path):
    rows = [dict(task="task2", arch="gla", amb=40, feat=feat, lr=1e-3, warmup=476, seed=1, test_acc=acc - (split == "heldout") / 5,
                 val_acc=0.5, num_parameters=feat * 1000, test_split=split, kind="train" if split == "faithful" else "evaluate")
            for feat, acc in ((256, 0.6), (512, 0.8)) for split in ("faithful", "heldout")]
    sel = select.select(runs_frame(rows)).sort_values(["test_split", "feat"])
    assert list(sel.test_split) == ["faithful", "faithful", "heldout", "heldout"] and set(sel.selected_by) == {select.VAL_RULE}
    assert list(sel.test_mean) == pytest.approx([0.6, 0.8, 0.4, 0.6])
    figures.accuracy_vs_size(sel, "task2", str(tmp_path / "both.pdf"), str(tmp_path / "both.png"), "Task 2")
    one = sel[sel.test_split == "faithful"]
    figures.accuracy_vs_size(one, "task2", str(tmp_path / "one.pdf"), str(tmp_path / "one.png"), "Task 2")
    (w2, h2), (w1, h1) = png_size(tmp_path / "both.png"), png_size(tmp_path / "one.png")
    assert h2 > 1.6 * h1 and abs(w2 - w1) < 0.1 * w1  # a second row, not a second column
    assert figures.selection_note(sel) == "(lr, warmup) selected on the validation split"


def test_task_illustration(tmp_path):
    figures.task_illustration(str(tmp_path / "t.pdf"), str(tmp_path / "t.png"), amb=3, seed=1, elements=8)
    assert is_pdf(tmp_path / "t.pdf") and is_png(tmp_path / "t.png")


def test_grammar_files(tmp_path):
    summary = tables.write_grammar(4, 1, str(tmp_path / "g.txt"), str(tmp_path / "g.json"))
    assert summary["num_classes"] == 4 * 4 + 1 and summary["vocab"] == 5
    import hashlib

    assert hashlib.md5((tmp_path / "g.txt").read_bytes()).hexdigest()[:12] == summary["fingerprint"]  # spec §14
    assert tables.grammar_table([str(tmp_path / "g.json")]).iloc[0]["fingerprint"] == summary["fingerprint"]


# --- cost estimate -------------------------------------------------------------------------------


def test_mean_sequence_lengths_follow_spec_section_6():
    from selectivbench.estimate import mean_length

    assert mean_length("task1", "train") == 400 and mean_length("task1", "test") == 400  # 1-step gaps
    assert mean_length("task2", "test") == 200 * 11  # tested at the longest training gap (10 steps)
    assert mean_length("task2", "train") == pytest.approx(200 * (1 + 5.5), rel=0.01)  # gaps of 1..10 steps
    assert mean_length("task3", "train") == pytest.approx(200 + 0.1 * 150)  # distractors: p 0.1 after element 50
    assert mean_length("task4", "test", 10.0) == 200 * 101  # L = 20 200 (spec §9)


def test_estimate_counts_runs_per_figure_and_uses_measured_rows(tmp_path):
    from selectivbench import estimate

    config = check(copy.deepcopy(PAPER), SCHEMA, registered=plan.registered_architectures)
    rows = {r["target"]: r for r in estimate.estimate(config, {})}
    assert rows["task1_complexity"]["runs"] == 10584 - 168 and rows["task1_complexity"]["skipped"] == 168
    assert rows["task1_model_size"]["runs"] == 1512 - 24
    assert rows["task4_gap_generalization"]["evaluations"] == 1792
    total = rows["total (unique jobs)"]
    assert total["runs"] == 13224 and total["estimated_share"] == 1.0
    assert total["gpu_hours"] == pytest.approx(sum(rows[t]["gpu_hours"] for t in rows if t not in ("total (unique jobs)", "task1_model_size")))

    bench = tmp_path / "bench_train_x_cuda.csv"
    pd.DataFrame([dict(arch="gla", task="task2", feat=1296, layers=8, batch=64, mean_len=1300, update_ms_median=900.0, error="")]).to_csv(bench, index=False)
    table = tmp_path / "step_times.csv"
    assert estimate.import_bench(str(bench), str(table)) == (1, [])
    measured = estimate.read_table(str(table))[("gla", "task2", 1296)]
    assert measured.source == "measured" and measured.ms_per_update == 900.0
    rows2 = {r["target"]: r for r in estimate.estimate(config, estimate.read_table(str(table)))}
    gla_runs = 3 * 2 * 4  # gla @ task2 feat 1296: 3 lr x 2 warmups x 4 seeds
    assert 0 < 1 - rows2["task2_noise_gaps"]["estimated_share"] < 1
    test_ms = 900.0 / (3 * 64) * 2200 / 1300  # forward only, at the test length
    tested = (3125 // 78) * 1000 + 1000 + 1000  # 40 evaluations, validation, held-out test
    expected = gla_runs * (3125 * 900.0 + tested * test_ms) / 3.6e6
    assert 1 - rows2["task2_noise_gaps"]["estimated_share"] == pytest.approx(expected / rows2["task2_noise_gaps"]["gpu_hours"], rel=0.05)


def test_import_bench_reads_both_benchmark_forms(tmp_path, capsys):
    """bench_train CSVs (task column, real batches) and bench_gpu-style CSVs (arch, d/feat, T, B,
    ms per step): measured rows replace the estimated ones of the same (arch, task, feat) only."""
    from selectivbench import estimate

    table = tmp_path / "step_times.csv"
    table.write_text("# header kept\n" + ",".join(estimate.TABLE_COLUMNS) + "\n"
                     "gla,task1,256,30.0,0.03,H100 (assumed),estimated,FLOP model\n"
                     "gla,task1,512,40.0,0.05,H100 (assumed),estimated,FLOP model\n")
    train_csv = tmp_path / "bench_train_x_vm_cuda.csv"
    pd.DataFrame([dict(arch="gla", task="task1", feat=256, layers=8, batch=64, mean_len=400, update_ms_median=127.4, error=""),
                  dict(arch="mamba", task="task1", feat=256, layers=8, batch=64, mean_len=400, update_ms_median=None, error="OOM")]
                 ).to_csv(train_csv, index=False)
    (tmp_path / "bench_train_x_vm_cuda.md").write_text("# bench_train 2026 on vm / NVIDIA H100 80GB HBM3 / torch 2.11 / bfloat16 / load 1\n")
    assert estimate.cli_main(["--import-bench", str(train_csv), "--step-times", str(table)]) == 0
    assert "skipped line 3 (mamba feat 256 length 400): error: OOM" in capsys.readouterr().out
    rows = estimate.read_table(str(table))
    assert rows[("gla", "task1", 256)] == estimate.StepTime(127.4, pytest.approx(127.4 / 192, rel=1e-3), "measured")
    assert rows[("gla", "task1", 512)].source == "estimated"
    text = table.read_text()
    assert text.startswith("# header kept") and "NVIDIA H100 80GB HBM3 bfloat16,measured" in text

    gpu_csv = tmp_path / "gpu_x.csv"
    gpu_csv.write_text("arch,variant,d/feat,T,B,ms per step,error\n"
                       "gla,eager,512,400,64,150.0,\n"  # task1 (mean training length 400)
                       "gla,eager,512,1300,64,390.0,\n"  # task2
                       "gla,eager,512,2200,64,600.0,\n"  # a test length: no training task
                       "gla,fla,512,400,64,90.0,\n"  # another implementation
                       "gla,eager,512,400,32,80.0,\n")  # another batch
    n, skipped = estimate.import_bench(str(gpu_csv), str(table), device="H100 bf16")
    assert n == 2 and len(skipped) == 3
    assert any("no task's mean training length" in s for s in skipped) and any("variant fla" in s for s in skipped)
    rows = estimate.read_table(str(table))
    assert rows[("gla", "task1", 512)].ms_per_update == 150.0 and rows[("gla", "task2", 512)].source == "measured"
    assert rows[("gla", "task2", 512)].ms_per_test_sample == pytest.approx(390.0 / 192 * 2200 / 1300, rel=1e-3)
    assert rows[("gla", "task1", 256)].ms_per_update == 127.4  # the earlier import stays

    bad = tmp_path / "gpu_bad.csv"
    bad.write_text("arch,feat,T,ms\ngla,256,400,1.0\n")
    assert estimate.cli_main(["--import-bench", str(bad), "--step-times", str(table)]) == 2
    assert "no column for batch (accepted: batch: batch, b)" in capsys.readouterr().err


def test_committed_step_times_have_the_measured_h100_rows(capsys):
    from selectivbench import estimate

    rows = estimate.read_table(str(ROOT / "bench/results/step_times.csv"))
    measured = {k for k, t in rows.items() if t.source == "measured"}
    assert {(a, t, 256) for a in PAPER_ARCHS for t in ("task1", "task2")} <= measured
    assert rows[("mamba", "task1", 256)].ms_per_update == 1256.3  # bench_train_20261125_vm_cuda.csv
    assert rows[("gla", "task1", 512)].ms_per_update == 239.7  # gpu_20261125b/gpu_eager.csv (bench_gpu, T 400)
    assert rows[("gla", "task1", 384)].source == "estimated"  # no benchmark at this width
    config = check(copy.deepcopy(PAPER), SCHEMA, registered=plan.registered_architectures)
    assert estimate.table_summary(rows, config).startswith(f"{len(measured)} of {len(rows)} rows measured")


def test_estimated_step_times_are_scaled_by_the_nearest_measured_width():
    """The FLOP model is scaled per architecture by measured/model at its nearest measured width,
    the same task first; an architecture with nothing measured keeps the plain model."""
    from selectivbench import estimate

    config = check(copy.deepcopy(PAPER), SCHEMA, registered=plan.registered_architectures)
    plain = estimate.CostModel(config, {})
    base = plain.step_time("gla", "task1", 256, estimate.BENCH_AMB).ms_per_update
    table = {("gla", "task1", 256): estimate.StepTime(3 * base, 0.1, "measured"),
             ("gla", "task2", 1024): estimate.StepTime(5 * plain.step_time("gla", "task2", 1024, 40).ms_per_update, 0.1, "measured")}
    cm = estimate.CostModel(config, table)
    assert cm.calibration("gla", "task1", 384) == pytest.approx(3)  # same task, the only width
    assert cm.calibration("gla", "task2", 256) == pytest.approx(5)  # the same task before another's equal width
    assert cm.calibration("gla", "task3", 384) == pytest.approx(3)  # no task3 row: nearest width of any task
    scaled, model = cm.step_time("gla", "task1", 512, 20), plain.step_time("gla", "task1", 512, 20)
    assert scaled.source == "estimated" and scaled.ms_per_update == pytest.approx(3 * model.ms_per_update)
    assert scaled.ms_per_test_sample == pytest.approx(3 * model.ms_per_test_sample)
    assert cm.step_time("delta_net", "task1", 512, 20) == plain.step_time("delta_net", "task1", 512, 20)
    assert cm.step_time("gla", "task1", 256, 40).source == "measured"
