"""Offline fixtures: the tiny families are generated once per test session into a temporary folder."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the suite may reach the Hub
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import pytest
from PIL import Image

from pipelines import Engine, load_families, load_mode_presets
from pipelines.offline.tiny import ensure_tiny_models


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory):
    os.environ["IMAGE_PROMPT_TINY_DIR"] = str(tmp_path_factory.mktemp("tiny"))  # the app under test uses it too
    return ensure_tiny_models()


@pytest.fixture(scope="session")
def families():
    return load_families()


@pytest.fixture(scope="session")
def presets(families):
    return load_mode_presets(families)


@pytest.fixture(scope="session")
def engines(families, tiny_root):
    """One loaded engine per tiny family, shared by the session (as the app shares one)."""
    built = {}
    for name in ("tiny", "tiny-sd15"):
        # A fixed batch keeps pass counts exact in the properties tested; the measured choice is tested on its own.
        engine = Engine(families[name], tiny_root=tiny_root, max_batch=8)
        engine.load()
        built[name] = engine
    return built


@pytest.fixture(params=["tiny", "tiny-sd15"])
def family(request):
    """Runs a test on the SDXL-shaped and the SD1.5-shaped tiny family."""
    return request.param


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def assert_solo_results_under_concurrency(engine, requests, rounds: int = 2) -> None:
    """Each request, run by its own client thread `rounds` times while the others run, gives its solo pixels."""
    import threading

    solo = [pixels(engine.generate(r).image) for r in requests]
    results: dict[int, np.ndarray] = {}
    errors: list[Exception] = []

    def client(i: int) -> None:
        try:
            for _ in range(rounds):
                results[i] = pixels(engine.generate(requests[i]).image)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, expected in enumerate(solo):
        assert np.array_equal(results[i], expected), i


@pytest.fixture(scope="session")
def gold():
    """A reference with colour and texture: a gold gradient with stripes."""
    x = np.linspace(0, 1, 96)[None, :, None]
    y = np.linspace(0, 1, 80)[:, None, None]
    arr = np.concatenate([200 + 50 * x + 0 * y, 150 + 60 * y + 0 * x, 20 + 30 * x * y], axis=2)
    arr[::8] *= 0.6
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def blue():
    return Image.new("RGB", (64, 64), (20, 40, 220))


@pytest.fixture(scope="session")
def app_url(engines):
    """The whole app on the tiny family, served on localhost for the session (as people and clients see it)."""
    import app

    demo = app.create_app(engines["tiny"])
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **app.launch_options())
    yield url
    demo.close()


@pytest.fixture(scope="session")
def reference_files(tmp_path_factory, gold):
    """Reference images as files, as uploads arrive: a textured one and a photo with one face."""
    from tests.pipelines.test_face import ALICE

    folder = tmp_path_factory.mktemp("uploads")
    gold.save(folder / "gold.png")
    ALICE.save(folder / "alice.png")
    return {"gold": str(folder / "gold.png"), "alice": str(folder / "alice.png")}
