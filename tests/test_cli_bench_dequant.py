"""`bench` (CPU dequantization): every type's row carries the median-round and best-round ratios to
a copy_, and the summary names the geometric mean and the worst type of each (issue 16's measure)."""
import math

from comfyui_zimage_gguf.cli.bench import bench_dequant


def test_bench_rows_and_summary(capsys):
    rows = bench_dequant(["Q4_0", "Q8_0"], 64, 256, 3)
    assert [row["type"] for row in rows] == ["Q4_0", "Q8_0"]
    for row in rows:
        for key in ("x_copy", "x_copy_into", "best_x_copy_into"):
            assert row[key] > 0 and math.isfinite(row[key])
    printed = capsys.readouterr().out
    assert "geometric mean x copy_, best round:" in printed
    best = [row["best_x_copy_into"] for row in rows]
    geo = math.exp(sum(map(math.log, best)) / len(best))
    assert f"geometric mean x copy_, best round: {geo:.2f}; worst: {max(best):.2f}" in printed


def test_bench_passes_pool_the_runs_of_every_pass(capsys):
    rows = bench_dequant(["Q4_0"], 64, 256, 2, passes=3)
    printed = capsys.readouterr().out
    assert "pass 3 of 3" in printed and printed.count("Q4_0 ") == 1  # one table, after the passes
    assert rows[0]["best_x_copy_into"] > 0
