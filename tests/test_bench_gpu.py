"""bench/bench_gpu.py's merge of several calls' CSVs and its ours/fla ratio table."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench/bench_gpu.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def row(variant, ms=None, error="", arch="delta_net", feat=256, T=400):
    return {"arch": arch, "variant": variant, "feat": str(feat), "T": str(T), "ms_step": ms, "error": error}


def test_a_measured_row_replaces_a_time_limit_row_from_another_call():
    rows = [row("fla", error="not run: time limit"), row("fla", 71.8), row("fla", error="not run: time limit")]
    assert [r["ms_step"] for r in bench.merge_rows(rows)] == [71.8]


def test_ratio_is_best_ours_over_fla_and_failures_say_why():
    rows = [row("eager", 97.2), row("compiled", 38.2), row("fla", 71.8),
            row("eager", error="OOM", T=2200), row("fla", error="not run: time limit", T=2200)]
    table = bench.ratio_table(bench.merge_rows(rows))
    assert "| delta_net | 256 | 400 | 97.2 | 38.2 | – | 71.8 | 0.53 |" in table
    assert "| delta_net | 256 | 2200 | OOM | – | – | – | – |" in table
