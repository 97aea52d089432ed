"""The GPU run script (benchmarks/run_gpu_suite.sh) in its --dry-run mode, so that a mistake in
it is found here and not on a leased GPU."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_of_every_phase(tmp_path):
    pytest.importorskip("pycocotools", reason="the demo phase evaluates with pycocotools")
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    phases = ["build", "tests", "tensor_core", "bench", "model", "inference", "demo", "counters"]
    result = subprocess.run(["bash", "benchmarks/run_gpu_suite.sh", "--dry-run", *phases], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    log = (tmp_path / "gpu_suite.log").read_text()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "== done: status 0" in log
    for phase in ("build", "tests_cuda", "tests_all", "diagnose_tensor_core_float32", "tests_tensor_core",
                  "bench_tensor_core", "bench_tensor_core_tf32", "bench_model_tensor_core", "bench_attention",
                  "bench_sine_embed", "bench_deformable_attention", "bench_model", "bench_inference", "demo",
                  "counters_emulator_build", "counters_emulated"):
        assert f"   {phase}: exit 0" in log, phase
    assert list((tmp_path / "build" / "lib" / "dabdetr").glob("_C*.so"))  # built beside the package, not into it
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())["epochs"] == 1
    assert any(p.name.startswith("attention_") and p.suffix == ".json" for p in tmp_path.iterdir())
    assert any(p.name.startswith("deformable_attention_") and p.suffix == ".json" for p in tmp_path.iterdir())
    assert any(p.name.startswith("attention_") for p in (tmp_path / "tensor_core").iterdir())
    assert any(p.name.startswith("attention_") for p in (tmp_path / "tensor_core" / "tf32").iterdir())
    assert json.loads((tmp_path / "counters" / "emulated.json").read_text())["records"]


def test_unknown_phase_is_refused(tmp_path):
    result = subprocess.run(["bash", "benchmarks/run_gpu_suite.sh", "--dry-run", "benchmark"], cwd=ROOT,
                            env=dict(os.environ, OUT=str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown argument: benchmark" in result.stdout
