"""The benchmarks cannot rot: the GPU suite runs on CPU at tiny sizes (`--dry`), as CI runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_suite_runs_dry_on_cpu():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--gpu-suite", "--dry"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for row in ("diffusers, 1 image", "engine, 1 image", "diffusers, 5 strengths (a loop of set_ip_adapter_scale)",
                "diffusers, lower bound (one call, 5 images)", "engine, 5-strength sweep (one pass)",
                "the lower bound", "every General and Anime adapter loaded", "TFLOP/s",
                "XLabs, tiny-flux, 64 px, 2 steps, cpu", "XLabs, tiny-flux, 64 px, 2 steps, true CFG 4, cpu",
                "| 5-strength sweep, one pass | 4 |", "| 5 stock calls | 20 |",
                "tiny-flux2-klein, 4 reference(s), 64 px, 2 steps, cpu",
                "engine, 1 image at 1, no KV cache"):  # fmt: skip
        assert row in out, row


def test_the_stack_benchmark_runs():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    args = ["--steps", "1", "--size", "64", "--rounds", "1", "--no-full-size"]
    proc = subprocess.run([sys.executable, "-m", "bench.stack", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| 3 x 3 grid, batched | 1 |" in proc.stdout and "| 9 sequential renders | 9 |" in proc.stdout
    assert "4 image prompts" in proc.stdout and "cost of each added slot" in proc.stdout


def test_the_fast_and_score_benchmarks_run():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    for script, args, rows in (
        ("bench.fast", ["--family", "tiny", "--size", "64", "--rounds", "1"], ["fast, 5-strength comparison",
                                                                                   "fast / quality: attention"]),
        ("bench.score", ["--family", "tiny", "--size", "64", "--steps", "1", "--rounds", "1"],
         ["5-strength sweep, scored", "scoring / sweep"]),
    ):  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        for row in rows:
            assert row in proc.stdout, (script, row)


def test_the_structure_benchmark_runs():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    args = ["--steps", "1", "--size", "64", "--rounds", "1", "--no-full-size"]
    proc = subprocess.run([sys.executable, "-m", "bench.structure", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| 5-strength sweep, one pass | 1 | 1 |" in proc.stdout and "| 5 stock calls | 5 | 5 |" in proc.stdout
    assert "canny slot" in proc.stdout


def test_the_flux_benchmark_runs():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    args = ["--steps", "2", "--size", "64", "--rounds", "1"]
    proc = subprocess.run([sys.executable, "-m", "bench.flux", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| 5-strength sweep, one pass | 2 |" in proc.stdout and "| 5 stock calls | 10 |" in proc.stdout
    assert "| engine, 1 image |" in proc.stdout


def test_the_klein_benchmark_runs():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    args = ["--steps", "2", "--size", "64", "--rounds", "1", "--references", "2"]
    proc = subprocess.run([sys.executable, "-m", "bench.klein", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| 5-strength sweep, one pass | 4 |" in proc.stdout and "| 5 single renders | 16 |" in proc.stdout
    assert "| diffusers, 1 image (strength 1) | 2 |" in proc.stdout
