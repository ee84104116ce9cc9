"""Start-up: `python app --models tiny` until its first HTTP 200, against a bare `import torch, gradio, diffusers`.

    python -m bench.startup [--rounds 3]

Rounds are interleaved (bare, app, bare, app, ...) so both see the same machine load; medians and per-round ratios
are printed as a table. The tiny models are built once before the first round (as on any second start).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def bare_import() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, gradio, diffusers"], check=True, env=ENV, cwd=ROOT)
    return time.perf_counter() - start


def app_start() -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--models", "tiny", "--port", str(port)], cwd=ROOT, env=ENV,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
            if proc.poll() is not None:
                raise RuntimeError("app exited before serving")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    app_start()  # builds the tiny models into the cache once; not measured
    rows = []
    for _ in range(args.rounds):
        rows.append((bare_import(), app_start()))
    bare = statistics.median(r[0] for r in rows)
    started = statistics.median(r[1] for r in rows)
    print(f"\n### Start-up ({args.rounds} interleaved rounds)\n")
    print("| round | bare import s | app to first HTTP 200 s | ratio |")
    print("|---|---|---|---|")
    for i, (b, a) in enumerate(rows, 1):
        print(f"| {i} | {b:.2f} | {a:.2f} | {a / b:.2f} |")
    print(f"| median | {bare:.2f} | {started:.2f} | {started / bare:.2f} |")


if __name__ == "__main__":
    main()
