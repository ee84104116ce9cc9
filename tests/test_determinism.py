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


def test_the_first_request_again_after_every_kind_of_request(app_url, reference_files):
    """A fresh client's first request, then fast mode, FaceID Plus, another base in fast mode, a stacked request
    (a face slot on the right, a negative image, the tab's prompt on the left) and a fast 2 x 2 style comparison
    with a face slot; then the first request again: the same pixels, bit for bit (it drifted by one level)."""
    gold = [{"image": handle_file(reference_files["gold"])}]
    alice = [{"image": handle_file(reference_files["alice"])}]
    first = ("/general", {"prompt": "same", "reference": gold, "seed": 7, "steps": 2})
    others = [
        ("/general", {"prompt": "same", "reference": gold, "seed": 8, "speed": "fast"}),
        ("/face", {"prompt": "same", "reference": alice, "seed": 9, "steps": 2, "variant": "faceid-plusv2"}),
        ("/anime", {"prompt": "same", "reference": gold, "seed": 10, "base": "anime", "speed": "fast"}),
        ("/general", {"prompt": "same", "reference": gold, "seed": 11, "steps": 2, "region": "left",
                      "negative_reference": gold, "slots": [{"mode": "face", "region": "right"}],
                      "slot_images": alice}),
        ("/style_compare", {"prompt": "same", "reference": gold, "seed": 12, "speed": "fast", "strengths": "0.3, 0.9",
                            "extra_strengths": "0.2, 0.8", "slots": [{"mode": "face"}], "slot_images": alice}),
    ]  # fmt: skip
    client = Client(app_url, verbose=False)
    before = _pixels(client, first)
    for job in others:
        _pixels(client, job)
    after = _pixels(client, first)
    assert np.array_equal(before[0], after[0]), f"max difference {np.abs(before[0] - after[0]).max()}"


def test_a_cell_and_its_single_render_are_the_same_whatever_the_batch(engines, presets, gold):
    """Strength 0 in a 5-cell sweep is the text-only render bit for bit, on a CPU whose matrix kernels round a
    product of 2 rows differently from one of 10 (pipelines/numerics.py)."""
    from pipelines import build_request
    from pipelines.numerics import MIN_ROWS

    preset, engine = presets["general"]["tiny"], engines["tiny"]
    weight, rows = torch.randn(64, 96, generator=torch.Generator().manual_seed(0)), torch.randn(MIN_ROWS + 4, 96)
    many = torch.nn.functional.linear(rows, weight)
    for n in range(1, MIN_ROWS + 4):  # each row's bits do not depend on how many rows went with it
        assert torch.equal(torch.nn.functional.linear(rows[:n], weight), many[:n]), n
    none = np.asarray(engine.generate(build_request(preset, prompt="a cat", seed=3)).image, dtype=np.int16)
    sweep = engine.generate_sweep(
        build_request(preset, prompt="a cat", seed=3, reference=[gold]).swept([0.0, 0.5, 1.0])
    )
    assert np.array_equal(np.asarray(sweep.images[0], dtype=np.int16), none)
