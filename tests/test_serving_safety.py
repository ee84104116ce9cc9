"""Serving strangers: what a visitor can send through raw HTTP and the API, and what they must never get.

Every case goes to the served tiny app (the same launch options as `python app.py`).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from gradio.utils import get_upload_folder
from gradio_client import Client, handle_file
from PIL import Image

import app
from ui.serving import GATE, MAX_JOBS_PER_SESSION

REFUSED = "was not uploaded to this app. Upload the file itself."


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A real image on the server's disk that nobody uploaded."""
    path = tmp_path_factory.mktemp("server-disk") / "secret.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def planted_link(outside):
    """A symbolic link inside Gradio's upload folder that points at the outside image."""
    folder = Path(get_upload_folder()) / f"planted-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    link = folder / "link.png"
    link.symlink_to(outside)
    yield str(link)
    link.unlink()
    folder.rmdir()


def not_uploaded_paths(outside: str, planted_link: str) -> dict[str, str]:
    return {
        "absolute, exists": outside,
        "absolute, missing": str(Path(outside).with_name("missing.png")),
        "relative": "../../../" + outside.lstrip("/"),
        "symlink inside the upload folder": planted_link,
        "the upload folder itself": get_upload_folder(),
        "system file": "/etc/hostname",
    }


def raw_call(url: str, api_name: str, **values: object) -> tuple[str, str]:
    """Call an endpoint over plain HTTP (no client library): ("complete" or "error", the data line)."""
    base = url.rstrip("/") + "/gradio_api"
    params = httpx.get(base + "/info", timeout=10).json()["named_endpoints"][api_name]["parameters"]
    data = [values.get(p["parameter_name"], p.get("parameter_default")) for p in params]
    event_id = httpx.post(f"{base}/call{api_name}", json={"data": data}, timeout=10).json()["event_id"]
    events = httpx.get(f"{base}/call{api_name}/{event_id}", timeout=60).text.strip().split("\n\n")
    kind, payload = events[-1].split("\n", 1)
    return kind.removeprefix("event: "), payload.removeprefix("data: ")


@pytest.mark.parametrize("meta", [False, True], ids=["no meta marker", "meta marker"])
@pytest.mark.parametrize(
    ("api_name", "param"),
    [("/general", "reference"), ("/general_compare", "reference"), ("/general_preview", "reference"),
     ("/style_settings", "reference"), ("/anime", "face_reference")],
)  # fmt: skip
def test_only_uploaded_files_are_read(app_url, outside, planted_link, api_name, param, meta):
    messages = {}
    for kind, path in not_uploaded_paths(outside, planted_link).items():
        item = {"path": path, "meta": {"_type": "gradio.FileData"}} if meta else {"path": path}
        status, text = raw_call(app_url, api_name, prompt="x", **{param: [{"image": item}]})
        assert status == "error", kind
        assert "Generation failed" not in text, kind
        messages[kind] = text.replace(path, "PATH")  # Gradio's own refusal quotes the caller's path back
    # Gradio itself refuses a name without an image extension ("Invalid file type") and a meta-marked path outside
    # its cache ("not uploaded by a user"); our boundary answers every other case with one message. None of them
    # depends on whether the file exists.
    assert messages["absolute, exists"] == messages["absolute, missing"]
    if meta:
        assert all("not uploaded by a user" in t or "Invalid file type" in t for t in messages.values())
    else:
        assert len({messages[k] for k in ("absolute, exists", "relative", "symlink inside the upload folder")}) == 1
        assert all(REFUSED in t for k, t in messages.items() if k not in ("the upload folder itself", "system file"))


@pytest.mark.parametrize("meta", [False, True], ids=["no meta marker", "meta marker"])
def test_the_score_image_reads_only_uploaded_files(app_url, outside, planted_link, tmp_path, meta):
    """`<mode>_score`'s image was a gr.Image: Gradio opened any path, and converted a non-RGB picture into its cache."""
    grey = tmp_path / "grey.png"  # not plain RGB: Gradio's preprocessing used to copy it into its cache
    Image.new("L", (32, 32), 90).save(grey)
    cases = {**not_uploaded_paths(outside, planted_link), "grey, exists": str(grey),
             "relative grey": "../../../" + str(grey).lstrip("/"), "a folder": str(tmp_path)}  # fmt: skip
    messages = {}
    for kind, path in cases.items():
        item = {"path": path, "meta": {"_type": "gradio.FileData"}} if meta else {"path": path}
        status, text = raw_call(app_url, "/general_score", image=item, prompt="leak?")
        assert status == "error", kind
        assert "adherence" not in text and "Generation failed" not in text, kind
        assert not any(e in text for e in ("FileNotFound", "UnidentifiedImage", "IsADirectory")), kind
        messages[kind] = text.replace(path, "PATH")
    if meta:  # Gradio refuses them itself (the upload folder itself passes Gradio's check and meets ours)
        assert all(
            any(m in t for m in ("not uploaded by a user", "Invalid file type", REFUSED)) for t in messages.values()
        )
    else:  # one message whether the path exists, is missing, is a folder or a link: nothing to learn
        refused = {k: t for k, t in messages.items() if REFUSED in t}
        assert set(refused) >= {"absolute, exists", "absolute, missing", "relative", "grey, exists",
                                "relative grey", "symlink inside the upload folder", "a folder"}  # fmt: skip
        assert len(set(refused.values())) == 1
        assert "Image to score 1 was not uploaded" in next(iter(refused.values()))


def test_the_score_image_is_decoded_within_the_budget(client, tmp_path, gold):
    huge = tmp_path / "huge-grey.png"  # 136 KB on disk, 144 megapixels decoded
    Image.new("L", (12000, 12000), 128).save(huge, optimize=True)
    start = time.perf_counter()
    with pytest.raises(Exception, match=r"Image to score 1 is too large \(12000x12000 pixels"):
        client.predict(image=handle_file(str(huge)), prompt="x", api_name="/general_score")
    assert time.perf_counter() - start < 5  # refused from the header, not after decoding
    sgi = tmp_path / "picture.png"  # an SGI file under a PNG name: references refuse the format, so does scoring
    gold.save(sgi, format="SGI")
    with pytest.raises(Exception, match="Image to score 1 is not a readable image"):
        client.predict(image=handle_file(str(sgi)), prompt="x", api_name="/general_score")
    fine = tmp_path / "fine.png"
    gold.convert("L").save(fine)  # a grey picture that was uploaded is scored
    scores = client.predict(image=handle_file(str(fine)), prompt="x", api_name="/general_score")
    assert "adherence" in scores


def test_load_settings_reads_only_uploaded_files(app_url, outside, tmp_path):
    settings = tmp_path / "outside.json"
    settings.write_text(json.dumps({"mode": "general", "prompt": "leaked"}))
    for item in ({"path": str(settings)}, {"path": str(settings), "meta": {"_type": "gradio.FileData"}}):
        status, text = raw_call(app_url, "/load_settings", path=item)
        assert status == "error" and "leaked" not in text and "Loaded" not in text


def test_one_request_has_a_size_cap(client, tmp_path):
    files = []
    for i in range(3):  # 3 x 24 MB: each under the 25 MB upload cap, 72 MB together
        path = tmp_path / f"big{i}.png"
        path.write_bytes(os.urandom(24 * 2**20))
        files.append({"image": handle_file(str(path))})
    with pytest.raises(Exception, match="may add up to 64 MB at most"):
        client.predict(prompt="x", reference=files, api_name="/general")


def test_one_visitor_keeps_a_bounded_amount_in_the_upload_folder(app_url, monkeypatch):
    from ui.uploads import UPLOADS

    monkeypatch.setattr(UPLOADS, "per_visitor", 2**20)  # 1 MB per address (256 MB when served)
    monkeypatch.setattr(UPLOADS, "total", 3 * 2**20)

    def upload(size: int) -> httpx.Response:
        files = [("files", (f"{uuid.uuid4().hex}.png", os.urandom(size), "image/png"))]
        return httpx.post(app_url.rstrip("/") + "/gradio_api/upload", files=files, timeout=30)

    stored = []
    for _ in range(3):  # 3 x 400 KB from one address: the oldest goes to make room for the third
        response = upload(400 * 2**10)
        assert response.status_code == 200, response.text
        stored += response.json()
    time.sleep(0.5)  # Gradio moves uploads to their final place in the background
    upload(10)  # metering looks at the disk again
    assert not os.path.exists(stored[0]) and all(os.path.exists(p) for p in stored[1:])
    assert UPLOADS.used(visitor="127.0.0.1") <= 2**20
    too_big = upload(2 * 2**20)
    assert too_big.status_code == 413
    assert "one visitor may keep at most 1 MB here" in too_big.json()["detail"]
    chunked = httpx.post(app_url.rstrip("/") + "/gradio_api/upload", content=iter([b"x"]), timeout=10)
    assert chunked.status_code == 411  # no size given: refused before anything is written


def test_settings_file_cannot_put_markup_into_a_page(client, tmp_path):
    crafted = tmp_path / "crafted.json"
    markup = '<img src=x onerror="alert(1)">'
    crafted.write_text(json.dumps({"mode": "general", "schema": 1, "variant": markup}))
    with pytest.raises(Exception) as err:
        client.predict(path=handle_file(str(crafted)), api_name="/load_settings")
    text = str(err.value)
    assert "This settings file is not valid" in text
    assert "<img" not in text and "&lt;img" in text  # escaped: shown as text in the toast


def test_settings_load_the_validated_values(client, tmp_path):
    crafted = tmp_path / "bidi.json"
    crafted.write_text(json.dumps({"mode": "general", "prompt": "a \u202ecat\u0007 in snow", "steps": 3}))
    result = json.dumps(client.predict(path=handle_file(str(crafted)), api_name="/load_settings"))
    assert "a cat in snow" in result  # bidi and control characters are gone from what the controls get
    assert "\\u202e" not in result and "\\u0007" not in result and "__type__" not in result
    for content, message in [
        ({"mode": "general", "strength": "0.5"}, "strength must be a number, got '0.5'"),
        ({"mode": "general", "steps": 10**40}, r"steps = 1000000000\d+ is outside \[1, 50\]"),
        ({"mode": "general", "layout": 1}, "layout must be true or false"),
    ]:
        crafted.write_text(json.dumps(content))
        with pytest.raises(Exception, match=f"This settings file is not valid: {message}"):
            client.predict(path=handle_file(str(crafted)), api_name="/load_settings")


def test_no_endpoint_changes_the_base_for_others(client, reference_files):
    endpoints = {e.removeprefix("/") for e in client.view_api(return_format="dict")["named_endpoints"]}
    assert "set_base" not in endpoints
    gold = [{"image": handle_file(reference_files["gold"])}]
    results = {}

    def run(name: str, kwargs: dict) -> None:
        results[name] = Client(client.src, verbose=False).predict(prompt="x", reference=gold, seed=3, **kwargs)

    threads = [
        threading.Thread(target=run, args=("anime", {"base": "anime", "api_name": "/anime"})),
        threading.Thread(target=run, args=("general", {"api_name": "/general"})),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["anime"][3]["base"] == "anime" and results["anime"][3]["base_model"] == "tiny-sdxl-anime"
    assert results["general"][3]["base"] == "default" and "base default" in results["general"][2]


def test_caches_are_no_membership_oracle(app_url, reference_files):
    gold = [{"image": handle_file(reference_files["gold"])}]
    first = Client(app_url, verbose=False).predict(prompt="x", reference=gold, steps=1, api_name="/general")
    other = Client(app_url, verbose=False).predict(prompt="x", reference=gold, steps=1, api_name="/general")
    assert first[3]["diagnostics"]["cache_hits"] == 0 and other[3]["diagnostics"]["cache_hits"] == 0  # nothing learnt


def _fn_index(url: str, api_name: str) -> tuple[int, list]:
    config = httpx.get(url.rstrip("/") + "/config", timeout=10).json()
    dep = next(d for d in config["dependencies"] if d.get("api_name") == api_name)
    values = {c["id"]: c.get("props", {}).get("value") for c in config["components"]}
    return dep["id"], [values.get(i) for i in dep["inputs"]]


def test_a_flood_from_one_client_is_refused_and_others_get_in(app_url, engines, reference_files):
    """200 raw joins from one session: a few are queued, the rest refused at once; another client is served."""
    fn_index, data = _fn_index(app_url, "general")
    session = uuid.uuid4().hex
    engine = engines["tiny"]
    dropped_before, calls_before = GATE.counters["dropped_gone"], engine.counters["unet_calls"]
    with engine.lock:  # freeze the GPU: joins pile up as they would behind a long render
        start = time.perf_counter()
        codes = []
        with httpx.Client(timeout=10) as http:
            for _ in range(200):
                body = {"data": data, "fn_index": fn_index, "session_hash": session, "trigger_id": None}
                codes.append(http.post(app_url.rstrip("/") + "/gradio_api/queue/join", json=body).status_code)
        flood_seconds = time.perf_counter() - start
        assert codes.count(200) == MAX_JOBS_PER_SESSION and codes.count(400) == 200 - MAX_JOBS_PER_SESSION
        refusal = httpx.post(app_url.rstrip("/") + "/gradio_api/queue/join", json=body, timeout=10).json()
        assert "You already have 3 requests waiting or running" in refusal["detail"]
        other = Client(app_url, verbose=False).submit(
            prompt="x", reference=[{"image": handle_file(reference_files["gold"])}], steps=1, api_name="/general"
        )
        time.sleep(0.5)  # the other client's job is queued behind the flood's few
    path, *_ = other.result(timeout=60)
    assert Image.open(path).size == (64, 64)
    # The flood never listened for results: its jobs were dropped before drawing anything.
    assert GATE.counters["dropped_gone"] - dropped_before == MAX_JOBS_PER_SESSION
    assert engine.counters["unet_calls"] - calls_before == 1  # the other client's single step only
    print(f"flood of 200 joins answered in {flood_seconds:.2f} s")


def test_settings_and_previews_share_small_concurrency_groups(engines):
    fns = {f.api_name: f for f in app.create_app(engines["tiny"]).fns.values() if f.api_name}
    assert fns["general_preview"].concurrency_id == fns["general"].concurrency_id  # decodes: the GPU slot
    io = {fns[n].concurrency_id for n in ("general_settings", "face_settings", "load_settings")}
    assert len(io) == 1 and io != {fns["general"].concurrency_id}
    assert {fns[n].concurrency_limit for n in ("general_settings", "load_settings")} == {2}


def test_gradio_cache_is_bounded(engines):
    assert app.create_app(engines["tiny"]).delete_cache == (600, 3600)


def test_a_job_whose_client_went_away_never_runs(app_url, engines):
    """A client joins, listens, then closes its stream while the GPU is busy: its job is dropped, not drawn."""
    fn_index, data = _fn_index(app_url, "general")
    base = app_url.rstrip("/") + "/gradio_api"
    engine = engines["tiny"]
    calls = engine.counters["unet_calls"]
    session = uuid.uuid4().hex
    with engine.lock, httpx.Client(timeout=10) as http:
        body = {"data": data, "fn_index": fn_index, "session_hash": session, "trigger_id": None}
        assert http.post(base + "/queue/join", json=body).status_code == 200
        with http.stream("GET", base + "/queue/data", params={"session_hash": session}) as stream:
            next(stream.iter_lines())  # listening: the first message arrived
        time.sleep(0.5)  # the client is gone before the GPU frees up
    time.sleep(2.5)
    assert engine.counters["unet_calls"] == calls
    with engine.lock:
        pass  # nothing of that job is left running
