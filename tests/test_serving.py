"""Many users at once and safe serving: nothing leaks between requests, no file outside the app is served."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app


@pytest.fixture(scope="module")
def served(app_url):
    return app_url


@pytest.fixture(scope="module")
def refs(reference_files):
    return reference_files


def pixels_of(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_four_clients_at_once_get_what_they_would_get_alone(served, refs):
    jobs = [
        ("/general", {"prompt": "a vase", "reference": [{"image": handle_file(refs["gold"])}], "strength": 0.3}),
        ("/style", {"prompt": "a cat", "reference": [{"image": handle_file(refs["gold"])}], "layout": True}),
        ("/face", {"prompt": "a portrait", "reference": [{"image": handle_file(refs["alice"])}],
                   "variant": "faceid-plusv2", "structure": 2.0}),
        ("/anime", {"prompt": "in rain", "reference": [{"image": handle_file(refs["gold"])}], "strength": 1.2}),
    ]  # fmt: skip
    clients = [Client(served, verbose=False) for _ in jobs]

    def run(i: int) -> str:
        endpoint, kwargs = jobs[i]
        return clients[i].predict(**kwargs, seed=100 + i, api_name=endpoint)[0]

    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(run, range(len(jobs))))
    alone = [run(i) for i in range(len(jobs))]
    for a, b in zip(together, alone, strict=True):
        assert np.array_equal(pixels_of(a), pixels_of(b))


@pytest.mark.parametrize(
    "path",
    ["/gradio_api/file=/etc/passwd", "/gradio_api/file=../../../../etc/passwd", "/file=/etc/passwd",
     "/gradio_api/file=" + os.path.abspath(__file__)],
)  # fmt: skip
def test_files_outside_the_app_are_refused(served, path):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(served.rstrip("/") + path, timeout=10)
    assert err.value.code in (403, 404)


def test_uploads_over_the_limit_are_refused(served, tmp_path):
    big = tmp_path / "huge.png"
    big.write_bytes(b"\0" * (26 * 1024 * 1024))
    with pytest.raises(Exception, match=r"(?i)(too large|exceeds|maximum|size)"):
        Client(served, verbose=False).predict(prompt="x", reference=[{"image": handle_file(str(big))}],
                                              api_name="/general")  # fmt: skip


def test_queue_is_bounded(engines):
    assert app.create_app(engines["tiny"])._queue.max_size == app.QUEUE_SIZE == 64


@pytest.mark.slow
def test_soak_mixed_requests(served, refs, tmp_path):
    """Run with `pytest -m slow -k soak`: 300 requests, good and bad; zero crashes, memory stable."""
    import resource

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    client = Client(served, verbose=False)
    good_gold = {"reference": [{"image": handle_file(refs["gold"])}]}
    expected = pixels_of(client.predict(prompt="soak", seed=1, **good_gold, api_name="/general")[0])
    rss = []
    for i in range(300):
        kind = i % 5
        if kind == 0:
            assert np.array_equal(pixels_of(client.predict(prompt="soak", seed=1, **good_gold,
                                                           api_name="/general")[0]), expected)  # fmt: skip
        elif kind == 1:
            client.predict(prompt="soak", strengths="0, 0.5, 1", steps=2, **good_gold, api_name="/style_compare")
        elif kind == 2:
            with pytest.raises(Exception, match="not a readable image"):
                client.predict(prompt="x", reference=[{"image": handle_file(str(bad))}], api_name="/general")
        elif kind == 3:
            with pytest.raises(Exception, match="greater than maximum"):
                client.predict(prompt="x", strength=9.0, **good_gold, api_name="/anime")
        else:
            client.predict(prompt="x", reference=[{"image": handle_file(refs["alice"])}], steps=2, api_name="/face")
        if i % 50 == 0:
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print(f"soak: peak RSS {rss[1] / 1024:.0f} MB after warm-up, {rss[-1] / 1024:.0f} MB after 300 requests")
    assert rss[-1] - rss[1] < 300 * 1024  # KiB: peak memory grows by less than 300 MB after warm-up


def test_out_of_range_values_sent_straight_to_the_api(served, refs):
    client = Client(served, verbose=False)
    gold = [{"image": handle_file(refs["gold"])}]
    bounds = "greater than maximum|less than minimum"  # Gradio's own slider check comes first
    for kwargs, message in [
        ({"strength": 9.0}, f"Value 9.0 is ({bounds}) value 1.5"),
        ({"steps": 10_000}, bounds),
        ({"guidance": -3.0}, bounds),
        ({"width": 100_000}, bounds),
        ({"seed": -7}, r"seed = -7 is outside \[0, 4294967295\]"),
        ({"seed": 2**33}, "seed = 8589934592 is outside"),
        ({"strength": "nan"}, "Expected a `float`"),  # JSON carries no NaN; as text Gradio refuses it
        ({"width": 250, "height": 100}, "248x96 is 23,808 pixels; at most 16,384"),  # snapped to 8, then capped
    ]:
        with pytest.raises(Exception, match=message):
            client.predict(prompt="x", reference=gold, **kwargs, api_name="/general")


def test_login_is_required_with_auth(engines, reference_files):
    demo = app.create_app(engines["tiny"])
    _, url, _ = demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, auth=("ada", "s3cret"), **app.launch_options()
    )
    try:
        with pytest.raises(Exception):  # noqa: B017 - gradio_client raises its own error types here
            Client(url, verbose=False).predict(prompt="x", api_name="/general")
        path, *_ = Client(url, auth=("ada", "s3cret"), verbose=False).predict(prompt="x", api_name="/general")
        assert Image.open(path).size == (64, 64)
    finally:
        demo.close()


def test_empty_and_whitespace_prompts_draw_from_the_image_prompt_alone(served, refs):
    client = Client(served, verbose=False)
    for prompt in ("", "   \n\t "):
        _, _, report, meta, _ = client.predict(
            prompt=prompt, reference=[{"image": handle_file(refs["gold"])}], seed=9, api_name="/general"
        )
        assert meta["prompt"] == "" and "The prompt is empty: the image comes from the image prompt" in report
    _, _, report, _, seen = client.predict(prompt="a vase", seed=9, api_name="/general")
    assert "No reference image was given: the strength had no effect" in report and seen == []
