"""The queue under a flood: one client sends N raw joins while another person uses the app. Prints a table.

    python -m bench.flood               # 200 joins against the tiny app served on localhost
    python -m bench.flood --joins 500

Rounds alternate (quiet, flood, quiet, flood, ...) so both see the same machine load. "Other client" is the
wall time of a normal `/general` call through gradio_client, made right after the flood's joins.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("IMAGE_PROMPT_MODELS", "tiny")

import httpx
from gradio_client import Client, handle_file
from PIL import Image


def flood(url: str, joins: int) -> tuple[list[int], float, str]:
    """(status codes, seconds to answer every join, one refusal's text) for `joins` joins from one session."""
    config = httpx.get(url + "config", timeout=10).json()
    dep = next(d for d in config["dependencies"] if d.get("api_name") == "general")
    values = {c["id"]: c.get("props", {}).get("value") for c in config["components"]}
    body = {"data": [values.get(i) for i in dep["inputs"]], "fn_index": dep["id"], "session_hash": uuid.uuid4().hex}
    codes, refusal = [], ""
    start = time.perf_counter()
    with httpx.Client(timeout=30) as http:
        for _ in range(joins):
            response = http.post(url + "gradio_api/queue/join", json=body)
            codes.append(response.status_code)
            if response.status_code != 200:
                refusal = response.json().get("detail", "")
    return codes, time.perf_counter() - start, refusal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import app
    from pipelines import Engine
    from ui.serving import GATE

    engine = Engine(app.FAMILIES["tiny"])
    engine.load()
    demo = app.create_app(engine)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **app.launch_options())
    ref = Path(tempfile.mkdtemp()) / "ref.png"
    Image.new("RGB", (64, 64), (200, 150, 20)).save(ref)
    other = Client(url, verbose=False)
    call = {"prompt": "a vase", "reference": [{"image": handle_file(str(ref))}], "steps": 4, "api_name": "/general"}
    other.predict(**call)  # warm
    quiet, flooded, rows = [], [], []
    try:
        for _ in range(args.rounds):
            start = time.perf_counter()
            other.predict(**call)
            quiet.append(time.perf_counter() - start)
            dropped = GATE.counters["dropped_gone"]
            codes, seconds, refusal = flood(url, args.joins)
            start = time.perf_counter()
            other.predict(**call)
            flooded.append(time.perf_counter() - start)
            time.sleep(0.2)
            accepted = codes.count(200)
            rows.append((accepted, len(codes) - accepted, seconds, GATE.counters["dropped_gone"] - dropped))
    finally:
        demo.close()
    accepted, refused, seconds, dropped = rows[-1]
    print(f"\n### Queue under a {args.joins}-join flood from one session ({args.rounds} rounds, tiny family, CPU)\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| joins accepted / refused (each round) | {accepted} / {refused} |")
    print(f"| flood's accepted jobs dropped before running (never listened) | {dropped} |")
    print(f"| time to answer all {args.joins} joins, median | {statistics.median(r[2] for r in rows):.2f} s |")
    print(f"| refusal | {refusal[:90]} |")
    print(f"| other client's request, quiet, median | {statistics.median(quiet):.2f} s |")
    print(f"| other client's request, right after the flood, median | {statistics.median(flooded):.2f} s |")


if __name__ == "__main__":
    main()
