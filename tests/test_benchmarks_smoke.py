"""Smoke test of the benchmark package: every case runs once at the small size.

Only the structure of the results is checked, never the timings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import CASES, FLOORS, SCHEMA_VERSION, format_table, run_benchmarks  # noqa: E402
from benchmarks.__main__ import main  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402


@pytest.fixture(scope="module")
def numpy_result() -> dict:
    return run_benchmarks("numpy", "small", repeat=1)


def _check_time_entry(entry: dict) -> None:
    assert entry["time"]["median"] > 0
    assert len(entry["time"]["times"]) == 1
    assert entry["comparisons"], entry["case"]
    for comp in entry["comparisons"]:
        assert comp["floor"] in FLOORS
        assert comp["operation"] == FLOORS[comp["floor"]]
        assert comp["floor_median"] > 0
        assert comp["ratio"] == pytest.approx(entry["time"]["median"] / comp["floor_median"])
        # Targets hold only at the ci (CPU) and large (GPU) sizes.
        assert comp["target"] is None
        assert comp["meets"] is None


def test_every_case_runs_or_says_why(numpy_result: dict) -> None:
    ran = [entry["case"] for entry in numpy_result["cases"]]
    skipped = [item["case"] for item in numpy_result["skipped"]]
    assert sorted(ran + skipped) == sorted(CASES)
    for item in numpy_result["skipped"]:
        assert item["reason"]
    # The core cases never depend on optional modules.
    core = {"report", "report_classifier", "update_gram", "update_nogram", "memory"}
    assert core | {"class_sums", "cdnv", "pair_metrics"} <= set(ran)


def test_result_structure(numpy_result: dict) -> None:
    assert numpy_result["schema"] == SCHEMA_VERSION
    config = numpy_result["config"]
    assert config["backend"] == "numpy"
    assert config["size"] == "small"
    assert config["repeat"] == 1
    assert config["gpu"] is False
    machine = numpy_result["machine"]
    for key in ("date", "cpu", "cpu_count", "python", "versions", "blas", "load_average"):
        assert key in machine
    assert "numpy" in machine["versions"]
    for entry in numpy_result["cases"]:
        assert entry["description"] == CASES[entry["case"]].description
        if CASES[entry["case"]].timed:
            _check_time_entry(entry)
        else:
            assert entry["time"] is None
        if CASES[entry["case"]].memory:
            memory = entry["memory"]
            assert memory["peak_extra_bytes"] >= 0
            assert memory["input_bytes"] > 0
            assert memory["tracker"] == "tracemalloc"
    json.dumps(numpy_result)  # JSON-ready as it is


def test_engine_cases_cover_every_k_against_the_scatter_add(numpy_result: dict) -> None:
    from benchmarks.cases import ENGINE_CLASSES, time_target

    entries = {e["case"]: e for e in numpy_result["cases"]}
    for classes in ENGINE_CLASSES:
        for case in (f"from_features_k{classes}", f"update_k{classes}"):
            entry = entries[case]
            assert entry["params"]["K"] == classes
            assert [c["floor"] for c in entry["comparisons"]] == ["read", "scatter", "scatter_t"]
            # The engine's target: within 4x of one scatter-add, on the CPU and a GPU.
            assert time_target(case, "scatter", gpu=False, size="ci") == 4.0
            assert time_target(case, "scatter", gpu=True, size="large") == 4.0
    assert time_target("pair_metrics_all", "means_gram", gpu=False, size="ci") == 2.5
    assert {"pair_metrics", "pair_metrics_f64"} <= set(entries)
    assert entries["pair_metrics_f64"]["params"]["dtype"] == "float64"


def test_memory_case_measures_the_report(numpy_result: dict) -> None:
    (entry,) = [e for e in numpy_result["cases"] if e["case"] == "memory"]
    num, dim, _ = entry["params"]["N"], entry["params"]["d"], entry["params"]["K"]
    # Features (float32) and labels (int64) are the input.
    assert entry["memory"]["input_bytes"] == num * dim * 4 + num * 8
    assert entry["memory"]["peak_extra_bytes"] > 0


def test_table_lists_every_case(numpy_result: dict) -> None:
    table = format_table(numpy_result)
    for entry in numpy_result["cases"]:
        assert entry["case"] in table
    assert "X @ V" in table


def test_strict_backend_runs_the_core_cases() -> None:
    pytest.importorskip("array_api_strict")
    result = run_benchmarks(
        "array-api-strict", "small", repeat=1, cases=["report", "update_gram", "class_sums"]
    )
    assert [e["case"] for e in result["cases"]] == ["report", "update_gram", "class_sums"]
    (sums,) = [e for e in result["cases"] if e["case"] == "class_sums"]
    # No native scatter-add in the strict namespace: compared with the read only.
    assert [c["floor"] for c in sums["comparisons"]] == ["read"]


def test_command_line_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    status = main(
        ["--size", "small", "--repeat", "1", "--cases", "class_sums,memory", "--json", str(out)]
    )
    assert status == 0
    result = json.loads(out.read_text())
    assert [e["case"] for e in result["cases"]] == ["memory", "class_sums"]
    assert "class_sums" in capsys.readouterr().out


def test_command_line_rejects_unknown_case(capsys: pytest.CaptureFixture) -> None:
    assert main(["--size", "small", "--cases", "nope"]) == 2
    assert "unknown case" in capsys.readouterr().err


def test_unknown_backend_and_size_are_errors() -> None:
    with pytest.raises(ValueError, match="backend"):
        run_benchmarks("jax", "small")
    with pytest.raises(ValueError, match="size"):
        run_benchmarks("numpy", "huge")


def test_machine_info_reports_blas() -> None:
    info = machine_info("numpy")
    assert info["blas"]["source"] in (
        "threadpoolctl",
        "openblas_get_corename",
        "numpy.show_config",
        "unknown",
    )


def test_chunk_budget_applies_for_the_run_only() -> None:
    import ncgeom.stats as stats_module

    defaults = stats_module.CHUNK_BYTES, stats_module.HOST_CHUNK_BYTES
    seen = []
    result = run_benchmarks(
        "numpy",
        "small",
        repeat=1,
        cases=["report"],
        chunk_mib=0.25,
        progress=lambda _: seen.append(stats_module.HOST_CHUNK_BYTES),
    )
    assert seen == [2**18]
    assert result["config"]["chunk_bytes"] == {"device": 2**18, "host": 2**18}
    assert (stats_module.CHUNK_BYTES, stats_module.HOST_CHUNK_BYTES) == defaults
    with pytest.raises(ValueError, match="`chunk_mib` must be positive; got 0"):
        run_benchmarks("numpy", "small", repeat=1, cases=["report"], chunk_mib=0)


def test_profile_names_each_case_its_floors_and_its_operations() -> None:
    pytest.importorskip("torch")
    from benchmarks.profile import main, profile_cases

    text = profile_cases("small", ["report", "class_sums"], rows=3)
    assert "== report:" in text and "floors: X @ V" in text
    assert "== class_sums:" in text and "X.sum(axis=0)" in text
    assert "aten::" in text  # the profiler's operation table
    with pytest.raises(ValueError, match=r"unknown cases \['nope'\]"):
        profile_cases("small", ["nope"])
    with pytest.raises(ValueError, match="`rows` must be at least 1; got 0"):
        profile_cases("small", ["report"], rows=0)
    assert main(["--size", "small", "--cases", "nope"]) == 2


def test_the_torch_cases_of_language_models_run() -> None:
    pytest.importorskip("transformers")
    result = run_benchmarks("torch", "small", repeat=1, cases=["hf_callback", "update_tokens"])
    assert not result["skipped"], result["skipped"]
    floors = {entry["case"]: entry["comparisons"][0]["floor"] for entry in result["cases"]}
    assert floors == {"hf_callback": "train_steps", "update_tokens": "few_classes"}
    for entry in result["cases"]:
        _check_time_entry(entry)
