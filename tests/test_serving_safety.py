"""Serving strangers: what a visitor can send through raw HTTP and the API, and what they must never get.

Every case goes to the served tiny app (the same launch options as `python app.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
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
from tests.test_app import free_port
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


# ------------------------------------------------------------------------------------------- safety III


def _hold_jobs(app_url: str, count: int) -> list[str]:
    """`count` joins from as many sessions of this address, left waiting (the caller holds the engine lock)."""
    fn_index, data = _fn_index(app_url, "general")
    sessions = []
    with httpx.Client(timeout=10) as http:
        for _ in range(count):
            session = uuid.uuid4().hex
            body = {"data": data, "fn_index": fn_index, "session_hash": session, "trigger_id": None}
            assert http.post(app_url.rstrip("/") + "/gradio_api/queue/join", json=body).status_code == 200
            sessions.append(session)
    return sessions


def test_a_visitor_cannot_choose_its_own_address(app_url, engines):
    """With this address's allowance of jobs held, joins that claim another address (X-Forwarded-For) are refused:
    uvicorn believed that header from any local client."""
    from ui.serving import MAX_JOBS_PER_IP

    fn_index, data = _fn_index(app_url, "general")
    with engines["tiny"].lock:
        _hold_jobs(app_url, MAX_JOBS_PER_IP)
        for n in range(3):
            body = {"data": data, "fn_index": fn_index, "session_hash": uuid.uuid4().hex, "trigger_id": None}
            joined = httpx.post(app_url.rstrip("/") + "/gradio_api/queue/join", json=body, timeout=10,
                                headers={"X-Forwarded-For": f"10.66.0.{n}", "X-Real-IP": f"10.66.0.{n}"})  # fmt: skip
            assert joined.status_code == 400 and "Your address already has 8 requests" in joined.json()["detail"]
    assert os.environ["FORWARDED_ALLOW_IPS"] == ""


def test_on_a_space_the_address_is_the_one_its_proxy_appended(monkeypatch):
    from types import SimpleNamespace

    from ui.serving import client_ip

    request = SimpleNamespace(
        headers={"x-forwarded-for": "6.6.6.6, 203.0.113.9"}, client=SimpleNamespace(host="10.0.0.2")
    )
    assert client_ip(request) == "10.0.0.2"  # not on a Space: the peer (uvicorn decides what to believe)
    monkeypatch.setenv("SPACE_ID", "someone/studio")
    assert client_ip(request) == "203.0.113.9"  # the first entry is whatever the client sent


def _raw_upload(url: str, length: int, body: bytes = b"", extra: str = "") -> socket.socket:
    """A hand-made `POST /gradio_api/upload` that declares `length` bytes and sends `body` (the rest never comes)."""
    parsed = httpx.URL(url)
    conn = socket.create_connection((parsed.host, parsed.port), timeout=10)
    boundary = "studio-boundary"
    head = (f"POST /gradio_api/upload HTTP/1.1\r\nHost: {parsed.host}\r\nContent-Length: {length}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n{extra}\r\n")  # fmt: skip
    conn.sendall(head.encode() + body)
    return conn


def test_an_upload_that_never_arrives_deletes_nothing(app_url, monkeypatch):
    from ui.uploads import UPLOADS

    monkeypatch.setattr(UPLOADS, "per_visitor", 2**20)
    files = [("files", (f"{uuid.uuid4().hex}.png", os.urandom(600 * 2**10), "image/png"))]
    kept = httpx.post(app_url.rstrip("/") + "/gradio_api/upload", files=files, timeout=30).json()
    time.sleep(0.5)
    conn = _raw_upload(app_url, 2**20)  # the whole quota declared, no body: nothing may be removed for it
    time.sleep(0.5)
    try:
        assert all(os.path.exists(p) for p in kept)
        assert UPLOADS.reserved("127.0.0.1") == 2**20
        second = httpx.post(app_url.rstrip("/") + "/gradio_api/upload", timeout=30,
                            files=[("files", ("b.png", os.urandom(600 * 2**10), "image/png"))])  # fmt: skip
        assert second.status_code == 413 and "Another upload of yours is still arriving" in second.json()["detail"]
    finally:
        conn.close()
    for _ in range(50):
        if UPLOADS.reserved("127.0.0.1") == 0:
            break
        time.sleep(0.1)
    assert UPLOADS.reserved("127.0.0.1") == 0 and all(os.path.exists(p) for p in kept)  # released, nothing lost


def test_a_stalled_upload_is_cut_off(app_url, monkeypatch):
    from ui import uploads

    monkeypatch.setattr(uploads, "STALL_S", 0.3)
    stalled = uploads.UPLOADS.counters["stalled"]
    conn = _raw_upload(app_url, 4096, b"--studio-boundary\r\n")
    try:
        for _ in range(50):
            if uploads.UPLOADS.counters["stalled"] > stalled:
                break
            time.sleep(0.1)
    finally:
        conn.close()
    assert uploads.UPLOADS.counters["stalled"] == stalled + 1


def test_a_chunked_upload_is_refused(app_url):
    conn = _raw_upload(app_url, 1, extra="Transfer-Encoding: chunked\r\n")
    answer = ""
    try:
        while "}" not in answer:  # the status line and headers, then the JSON body
            part = conn.recv(4096).decode("latin-1")
            if not part:
                break
            answer += part
    finally:
        conn.close()
    assert answer.startswith("HTTP/1.1 411") and "not be sent in chunks" in answer


def test_behind_a_login_an_upload_without_it_touches_nothing(engines, monkeypatch):
    from ui.uploads import UPLOADS

    demo = app.create_app(engines["tiny"])
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, auth=("ada", "s3cret"),
                            **app.launch_options())  # fmt: skip
    try:
        monkeypatch.setattr(UPLOADS, "per_visitor", 2**20)
        logged_in = httpx.Client(timeout=30)
        assert logged_in.post(url + "login", data={"username": "ada", "password": "s3cret"}).status_code == 200
        files = [("files", (f"{uuid.uuid4().hex}.png", os.urandom(600 * 2**10), "image/png"))]
        kept = logged_in.post(url + "gradio_api/upload", files=files).json()
        time.sleep(0.5)
        anonymous = httpx.post(url + "gradio_api/upload", timeout=30,
                               files=[("files", ("x.png", os.urandom(900 * 2**10), "image/png"))])  # fmt: skip
        assert anonymous.status_code == 401 and "Log in to upload" in anonymous.json()["detail"]
        assert all(os.path.exists(p) for p in kept)
    finally:
        demo.close()


def test_images_are_decoded_after_every_cheap_refusal(app_url, tmp_path, monkeypatch):
    """Eight 8192² references with a broken `slots`, or slot images with a bad `extra_strengths`: refused before any
    image is decoded."""
    from pipelines import codec

    decoded = []
    real = codec.load_reference
    monkeypatch.setattr(codec, "load_reference", lambda *a, **k: decoded.append(a) or real(*a, **k))
    big = tmp_path / "big.png"
    Image.new("RGB", (8192, 8192), (90, 90, 90)).save(big, optimize=True)
    client = Client(app_url, verbose=False)
    refs = [{"image": handle_file(str(big))} for _ in range(8)]
    with pytest.raises(Exception, match="slots must be a JSON list"):
        client.predict(prompt="x", reference=refs, slots="[oops", api_name="/general")
    with pytest.raises(Exception, match="extra_strengths"):
        client.predict(prompt="x", slots=[{"mode": "style", "images": 2}], slot_images=refs[:2],
                       extra_strengths="0.5, lots", api_name="/general_compare")  # fmt: skip
    assert decoded == []


def test_a_settings_png_of_a_million_chunks_answers_at_once(client, tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes = b"") -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    empty = chunk(b"abCd")
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    crafted = tmp_path / "chunks.png"
    crafted.write_bytes(head + empty * 1_000_000 + chunk(b"IEND"))  # 12 MB of empty chunks
    start = time.perf_counter()
    with pytest.raises(Exception, match="more than 256 chunks before its image data"):
        client.predict(path=handle_file(str(crafted)), api_name="/load_settings")
    assert time.perf_counter() - start < 3  # Pillow read every chunk first: seconds of the settings slot


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"slots": "[" * 100_000}, "slots is 100,000 characters; at most 16,384"),
        ({"slots": "[" * 5_000 + "]" * 5_000}, "slots is nested too deeply"),
    ],
)
def test_odd_values_get_the_apps_message(app_url, values, message):
    status, text = raw_call(app_url, "/general", prompt="x", **values)
    assert status == "error" and message in text and "Generation failed" not in text


@pytest.mark.parametrize("kind", ["canny", "depth", "control", "start"])
def test_a_thin_strip_with_crop_pad(client, tmp_path, kind):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (100_000, 1), (200, 30, 30)).save(strip)
    slot = {"mode": kind, "crop": "pad", **({"control_type": "canny"} if kind == "control" else {})}
    path, *_ = client.predict(prompt="x", steps=2, slots=[slot], slot_images=[{"image": handle_file(str(strip))}],
                              api_name="/general")  # fmt: skip
    assert Image.open(path).size == (64, 64)


def test_the_server_sends_nothing_nobody_asked_for(tiny_root, tmp_path):
    """`python app.py --models tiny` from start-up through a drawn image: no connection and no name lookup beyond
    this machine, recorded by an audit hook in the server process (it sees every socket connect and DNS lookup,
    whichever library makes it; the package index, a telemetry host and a public DNS service were seen)."""
    import subprocess
    import sys

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(EGRESS_HOOK)
    log_path = tmp_path / "egress.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE")}
    env.update(
        EGRESS_LOG=str(log_path), PYTHONPATH=str(hook), IMAGE_PROMPT_TINY_DIR=os.environ["IMAGE_PROMPT_TINY_DIR"]
    )
    root = Path(app.__file__).parent
    server = subprocess.Popen([sys.executable, "app.py", "--models", "tiny", "--port", str(port)], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(240):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            time.sleep(0.25)
        client = Client(url, verbose=False)
        path, *_ = client.predict(prompt="x", steps=1, api_name="/general")
        assert Image.open(path).size == (64, 64)
        time.sleep(3)  # start-up checks run in background threads
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert log_path.exists() is False or log_path.read_text() == "", log_path.read_text()
    assert "socket.connect" in EGRESS_HOOK  # the hook itself is tested by test_the_egress_hook_records


def test_the_egress_hook_records(tmp_path):
    """The hook used above records a lookup of a name outside this machine (so its silence means something)."""
    import subprocess
    import sys

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(EGRESS_HOOK)
    log_path = tmp_path / "egress.log"
    code = "import socket\ntry:\n    socket.getaddrinfo('pypi.org', 443)\nexcept OSError:\n    pass\n"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "EGRESS_LOG": str(log_path),
                                                      "PYTHONPATH": str(hook)}, check=True)  # fmt: skip
    assert log_path.read_text().strip() == "socket.getaddrinfo pypi.org"


EGRESS_HOOK = """
import ipaddress, os, sys

def _local(host):
    host = (host.decode() if isinstance(host, bytes) else str(host or "")).strip("[]")
    if host in ("", "localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified

def _hook(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):
        host = args[1][0]
    elif event == "socket.getaddrinfo":
        host = args[0]
    else:
        return
    if not _local(host):
        with open(os.environ["EGRESS_LOG"], "a") as f:
            f.write(f"{event} {host}\\n")

sys.addaudithook(_hook)
"""
