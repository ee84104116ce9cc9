"""End to end: the app on the tiny family, called through gradio_client as an API user would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

import app
from pipelines import build_request
from pipelines.metadata import read_png_metadata
from pipelines.request import RANDOM_SEED

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False, download_files=str(Path(os.environ["IMAGE_PROMPT_TINY_DIR"]) / "dl"))


@pytest.fixture(scope="module")
def gold_file(reference_files):
    return reference_files["gold"]


def gallery(*paths: str) -> list[dict]:
    return [{"image": handle_file(p)} for p in paths]


def test_general_endpoint_png_and_metadata(client, engines, presets, gold_file):
    settings = {"strength": 0.75, "seed": 1234, "steps": 3, "guidance": 4.5, "width": 72, "height": 64}
    path, seed, diagnostics, meta, _ = client.predict(
        prompt="a gold vase", reference=gallery(gold_file), **settings, api_name="/general"
    )
    assert seed == 1234
    assert Path(path).suffix == ".png"
    png_meta = read_png_metadata(path)
    counters = meta.pop("diagnostics")  # returned beside the metadata, not stored in the PNG
    assert png_meta == meta  # the PNG survives Gradio unchanged, metadata included
    assert counters["unet_calls"] == 3 and counters["batch_size"] == 1
    assert {k: meta[k] for k in settings} == settings
    assert "UNet calls" not in diagnostics and "CPU" in diagnostics  # a plain line; the counters are in the JSON
    # Through the app or straight through the library: the same pixels.
    request = build_request(presets["general"]["tiny"], prompt="a gold vase", references=[gold_file], **settings)
    direct = engines["tiny"].generate(request).image
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(direct))


def test_random_seed_is_reported(client):
    _, seed_a, _, meta_a, _ = client.predict(prompt="x", seed=RANDOM_SEED, api_name="/general")
    _, seed_b, _, _, _ = client.predict(prompt="x", seed=RANDOM_SEED, api_name="/general")
    assert meta_a["seed"] == seed_a and seed_a >= 0
    assert seed_a != seed_b  # 1 in 4 billion to fail by chance


def test_bad_input_gets_a_message_and_the_app_keeps_serving(client, gold_file, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"definitely not a png")
    with pytest.raises(Exception, match="Reference 2 is not a readable image"):
        client.predict(prompt="x", reference=gallery(gold_file, str(broken)), api_name="/general")
    with pytest.raises(Exception, match=r"steps must be a whole number"):
        client.predict(prompt="x", steps=2.5, api_name="/general")
    path, *_ = client.predict(prompt="x", reference=gallery(gold_file), api_name="/general")
    assert read_png_metadata(path)["references_sha256"]


def test_import_builds_demo_without_loading_weights():
    assert app.demo is not None
    blocks = app.demo.fns.values()
    assert any(fn.api_name == "general" for fn in blocks)
    assert not app.demo_engine_loaded()


def test_family_from_environment(monkeypatch):
    monkeypatch.setenv(app.FAMILY_ENV, "tiny-sd15")
    assert app.default_family() == "tiny-sd15"
    assert app.parse_args(["--models", "tiny", "--port", "7000", "--share"]).share is True
    with pytest.raises(SystemExit):
        app.parse_args(["--models", "huge"])
    with pytest.raises(SystemExit):
        app.parse_args(["--auth", "no-colon"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            app.parse_args(["--offload"])
    args = app.parse_args(["--dtype", "bf16", "--max-batch", "3", "--auth", "ada:pa:ss"])
    assert (app.DTYPES[args.dtype], args.max_batch, tuple(args.auth.split(":", 1))) == (
        torch.bfloat16,
        3,
        ("ada", "pa:ss"),
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_without_hub_stops_with_one_clear_message(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}  # an empty cache
    proc = subprocess.run(
        [sys.executable, "app.py", "--models", "sd15", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in proc.stderr
    assert "--models tiny" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_compare_endpoint_cells_grid_and_ab(client, gold_file):
    gallery_out, slider, grid, seed, diagnostics, meta, *_ = client.predict(
        prompt="a gold vase", reference=gallery(gold_file), strengths="0, 1", seed=77, steps=2,
        api_name="/general_compare",
    )  # fmt: skip
    assert [cell["caption"] for cell in gallery_out] == ["0", "1"]  # short captions: readable at any count
    assert seed == 77 and meta["strengths"] == [0.0, 1.0]
    assert read_png_metadata(grid)["strengths"] == [0.0, 1.0]  # the grid PNG carries the whole sweep
    assert 2 * 64 < Image.open(grid).width < 2 * 64 + 40  # two cells with their margins, side by side
    assert len(slider) == 2 and all(Path(p).is_file() for p in slider)  # two strengths: the A/B pair, plain paths
    assert "2 images in 1 pass" in diagnostics and meta["diagnostics"]["batch_size"] == 2
    cell_b = np.asarray(Image.open(gallery_out[1]["image"]).convert("RGB")).astype(int)
    single, *_ = client.predict(
        prompt="a gold vase", reference=gallery(gold_file), strength=1, seed=77, steps=2, api_name="/general"
    )
    assert np.abs(np.asarray(Image.open(single).convert("RGB")).astype(int) - cell_b).max() <= 2


def test_preview_endpoint(client, gold_file):
    views = client.predict(prompt="", reference=gallery(gold_file), crop="pad", api_name="/general_preview")
    assert len(views) == 1 and Image.open(views[0]["image"]).size == (32, 32)


def test_every_mode_has_its_endpoints(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    for mode in ("general", "face", "anime", "style"):
        assert {f"/{mode}", f"/{mode}_compare", f"/{mode}_preview", f"/{mode}_settings"} <= names
    assert "/load_settings" in names


def test_style_endpoint_with_layout(client, gold_file):
    path, _, _, meta, _ = client.predict(
        prompt="a cat", reference=gallery(gold_file), layout=True, seed=3, api_name="/style"
    )
    assert meta["mode"] == "style" and meta["layout"] is True
    assert meta["block_map"] == {"up": {"block_0": [0.0, 1.0, 0.0]}, "down": {"block_2": [0.0, 1.0]}}
    assert read_png_metadata(path)["strength"] == 1.0  # the style preset's default


def test_anime_endpoint_with_face_close_up(client, gold_file):
    _, _, _, meta, _ = client.predict(
        prompt="in the rain", reference=gallery(gold_file), face_reference=gallery(gold_file),
        variant="plus+plus-face", seed=3, api_name="/anime",
    )  # fmt: skip
    assert meta["mode"] == "anime" and meta["prompt"] == "in the rain" and len(meta["face_references_sha256"]) == 1
    with pytest.raises(Exception, match="needs a face close-up"):
        client.predict(prompt="x", reference=gallery(gold_file), variant="plus+plus-face", api_name="/anime")


def test_download_and_load_settings(client, gold_file):
    settings = client.predict(
        prompt="a lighthouse", reference=gallery(gold_file), strength=0.4, seed=99, layout=True,
        api_name="/style_settings",
    )  # fmt: skip
    note, values = loaded_values(client.predict(handle_file(settings), api_name="/load_settings"))
    assert "Loaded **style** settings (seed 99)" in note
    assert {"a lighthouse", 0.4, 99, True} <= {v for v in values if not isinstance(v, (list, dict))}

    png, *_ = client.predict(prompt="a gold vase", reference=gallery(gold_file), seed=5, api_name="/general")
    note, values = loaded_values(client.predict(handle_file(png), api_name="/load_settings"))
    assert "Loaded **general** settings (seed 5)" in note and "a gold vase" in values
    _, _, grid, *_ = client.predict(prompt="v", strengths="0, 0.3, 0.9", steps=1, api_name="/general_compare")
    note, data = client.predict(handle_file(grid), api_name="/load_settings")
    assert data["strengths"] == [0.0, 0.3, 0.9] and "Comparison strengths: 0, 0.3, 0.9" in note


def test_a_settings_file_with_missing_keys_fills_what_it_has(client, tmp_path):
    path = tmp_path / "partial.json"
    path.write_text('{"mode": "style", "strength": 0.7}')
    note, data = client.predict(handle_file(str(path)), api_name="/load_settings")
    assert data["settings"] == {"strength": 0.7}
    assert "Not in the file, left as they were:" in note and "`prompt`" in note and "`seed`" in note


def loaded_values(outputs: tuple) -> tuple[str, list]:
    """The status note and the loaded values (plain JSON: no Gradio update dicts reach an API caller)."""
    note, data = outputs
    assert "__type__" not in str(data)
    return note, list(data["settings"].values())


def test_load_settings_rejects_foreign_files(client, tmp_path):
    path = tmp_path / "notes.json"
    path.write_text("not json")
    with pytest.raises(Exception, match="neither a PNG made by this app nor a JSON settings file"):
        client.predict(handle_file(str(path)), api_name="/load_settings")


def test_face_endpoint(client, tmp_path):
    from tests.pipelines.test_face import ALICE, photo

    alice, crowd, empty = tmp_path / "alice.png", tmp_path / "crowd.png", tmp_path / "empty.png"
    ALICE.save(alice)
    photo(((128, 128), 32, (255, 0, 0)), ((384, 384), 128, (0, 0, 255))).save(crowd)
    Image.new("RGB", (640, 640)).save(empty)
    _, _, report, meta, seen = client.predict(
        prompt="a portrait", reference=gallery(str(alice), str(crowd)), variant="faceid-plusv2", structure=1.5,
        seed=4, api_name="/face",
    )  # fmt: skip
    assert meta["mode"] == "face" and meta["structure"] == 1.5 and meta["face_model"] == "tiny_faces"
    assert "Reference 2 shows 2 faces; the largest one (in the middle) is used." in report
    assert len(seen) == 4  # each photo with its face box, then each aligned crop
    offline = r"No face found in reference 2\. The offline face model only finds drawn faces like the example; real"
    with pytest.raises(Exception, match=offline):
        client.predict(prompt="x", reference=gallery(str(alice), str(empty)), api_name="/face")


def test_space_mode_builds_without_generating(engines, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/image-prompt-studio")  # examples are cached lazily on a Space
    calls = engines["tiny"].counters["unet_calls"]
    demo = app.create_app(engines["tiny"])
    assert demo is not None and engines["tiny"].counters["unet_calls"] == calls


def test_example_drawings_are_valid_references():
    from pipelines.images import load_reference
    from ui.examples import DRAWINGS, reference_path

    for name in DRAWINGS:
        assert load_reference(reference_path(name)).image.mode == "RGB"


def test_every_tab_has_three_distinct_examples_that_run_offline(engines, presets):
    """Each tab offers at least three examples with distinct drawn references; each one draws (offline)."""
    import gradio as gr

    from pipelines.images import load_reference

    demo = app.create_app(engines["tiny"])
    examples = [b for b in demo.blocks.values() if isinstance(b, gr.Dataset) and len(b.samples[0]) == 2]
    assert len(examples) == 4  # one example set with references per tab
    for mode, dataset in zip(("general", "face", "anime", "style"), examples, strict=True):
        rows = dataset.samples
        assert len(rows) >= 3
        paths = [row[1][0]["image"]["path"] for row in rows]
        assert len({load_reference(p).sha256 for p in paths}) == len(rows)  # distinct references
        for (prompt, _), path in zip(rows, paths, strict=True):
            request = build_request(presets[mode]["tiny"], prompt=prompt, steps=1, references=[path])
            assert engines["tiny"].generate(request).image.size == (64, 64)


def test_a_quiet_console_and_a_clean_stop(tmp_path):
    """`python app.py --models tiny`: no progress bars or known library notes; a bad request logs one line; SIGTERM
    (a container stop) shuts down like Ctrl+C and leaves no result folder behind."""
    port = free_port()
    temp = tmp_path / "temp"  # the server's temp directory: its result folder is made here
    temp.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": str(temp)}
    log = tmp_path / "console.txt"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--models", "tiny", "--port", str(port)], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            for _ in range(120):
                if "Running on local URL" in log.read_text():
                    break
                time.sleep(0.5)
            served = Client(f"http://127.0.0.1:{port}/", verbose=False)
            with pytest.raises(Exception, match="steps must be a whole number"):
                served.predict(prompt="x", steps=2.5, api_name="/general")
            from tests.pipelines.test_face import ALICE

            ALICE.save(tmp_path / "alice.png")  # FaceID Plus: loads its LoRA and aligns a face (both used to warn)
            served.predict(prompt="x", reference=gallery(str(tmp_path / "alice.png")), variant="faceid-plusv2",
                           steps=1, api_name="/face")  # fmt: skip
            time.sleep(0.5)
            assert list(temp.rglob("image-prompt-studio-*"))  # the result folder exists while serving
        finally:
            proc.terminate()  # SIGTERM
            code = proc.wait(timeout=30)
    console = log.read_text()
    assert code == 0 and not list(temp.rglob("image-prompt-studio-*")), console[-2000:]
    assert "Running on local URL" in console
    for noise in ("Traceback", "Loading weights", "Loading pipeline components", "requires torchvision",
                  "kept in float32", "HTTP Request", "No LoRA keys", "is deprecated"):  # fmt: skip
        assert noise not in console, noise
    assert console.count("steps must be a whole number") == 1


def test_every_endpoint_returns_plain_values(client, gold_file):
    """No Gradio update dicts reach an API caller: paths, numbers, text and JSON only."""
    ref = gallery(gold_file)
    outputs = [
        client.predict(prompt="x", reference=ref, steps=1, api_name="/general"),
        client.predict(prompt="x", steps=1, api_name="/general"),  # no reference: an empty adapter view
        client.predict(prompt="x", reference=ref, strengths="0, 1", steps=1, api_name="/general_compare"),
        client.predict(prompt="x", reference=ref, strengths="0, 0.5, 1", steps=1, api_name="/general_compare"),
        client.predict(prompt="x", reference=ref, api_name="/general_preview"),
        client.predict(prompt="x", api_name="/general_preview"),
        client.predict(prompt="x", reference=ref, api_name="/general_settings"),
    ]
    outputs.append(client.predict(handle_file(outputs[-1]), api_name="/load_settings"))
    for out in outputs:
        assert "__type__" not in str(out)
    assert outputs[1][4] == [] and outputs[5] == []
    assert outputs[3][1] is None  # three strengths: no A/B pair


def test_max_batch_flag():
    assert app.parse_args([]).max_batch == "auto" and app.parse_args(["--max-batch", "4"]).max_batch == 4
    for bad in ("0", "-2", "many"):
        with pytest.raises(SystemExit):
            app.parse_args(["--max-batch", bad])


def test_max_bases_flag():
    assert app.parse_args(["--max-bases", "2"]).max_bases == 2 and app.parse_args([]).max_bases == 1
    with pytest.raises(SystemExit):
        app.parse_args(["--max-bases", "0"])


def test_python_app_py_builds_the_ui_once(monkeypatch):
    """`python app.py` builds one UI (its own), not a second one for `app.demo`."""
    import gradio as gr

    builds = []
    real = app.create_app
    monkeypatch.setattr(app, "create_app", lambda *a, **k: builds.append(1) or real(*a, **k))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: None)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
    monkeypatch.setattr(app, "_demo", None)
    assert app.main(["--models", "tiny"]) == 0
    assert len(builds) == 1 and app._demo is None  # `app.demo` was never built
