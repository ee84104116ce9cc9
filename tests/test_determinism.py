"""The same request gives the same pixels through the server, whatever ran before it or beside it."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from gradio_client import Client, handle_file
from PIL import Image

from ui.serving import MAX_JOBS_PER_IP


def _jobs(refs: dict[str, str]) -> dict[str, tuple[str, dict]]:
    gold = [{"image": handle_file(refs["gold"])}]
    alice = [{"image": handle_file(refs["alice"])}]
    return {
        "quality": ("/general", {"prompt": "a vase", "reference": gold, "seed": 7}),
        "fast": ("/general", {"prompt": "a vase", "reference": gold, "seed": 7, "speed": "fast"}),
        "faceid": ("/face", {"prompt": "a portrait", "reference": alice, "seed": 7}),
        "face plus": ("/face", {"prompt": "a portrait", "reference": alice, "seed": 8, "variant": "faceid-plusv2"}),
        "sweep": ("/style_compare", {"prompt": "a cat", "reference": gold, "seed": 9, "strengths": "0.3, 0.9"}),
    }


def _pixels(client: Client, job: tuple[str, dict]) -> list[np.ndarray]:
    api_name, kwargs = job
    out = client.predict(**kwargs, api_name=api_name)
    paths = [cell["image"] for cell in out[0]] if api_name.endswith("_compare") else [out[0]]
    return [np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in paths]


def test_same_request_same_pixels_in_any_order_and_concurrently(app_url, reference_files):
    jobs = _jobs(reference_files)
    client = Client(app_url, verbose=False)
    solo = {name: _pixels(client, job) for name, job in jobs.items()}

    def same(name: str, got: list[np.ndarray]) -> None:
        assert len(got) == len(solo[name]), name
        for a, b in zip(got, solo[name], strict=True):
            assert np.array_equal(a, b), f"{name}: max difference {np.abs(a - b).max()}"

    for order in itertools.islice(itertools.permutations(jobs), 0, None, 37):  # a few orders, each one whole
        for name in order:
            same(name, _pixels(client, jobs[name]))
    # A thread left with another CPU thread count: worker threads made after it start with that count.
    poison = threading.Thread(target=torch.set_num_threads, args=(1,))
    poison.start()
    poison.join()
    try:
        names = (list(jobs) * 2)[:MAX_JOBS_PER_IP]  # eight clients at once (one address's allowance), each a visitor
        clients = [Client(app_url, verbose=False) for _ in names]
        with ThreadPoolExecutor(len(names)) as pool:
            results = list(pool.map(lambda i: _pixels(clients[i], jobs[names[i]]), range(len(names))))
    finally:
        torch.set_num_threads(torch.get_num_threads())  # this thread's count becomes the default again
    for name, got in zip(names, results, strict=True):
        same(name, got)
