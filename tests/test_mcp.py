"""`python app.py --mcp`: every endpoint is an MCP tool an agent can call, with images, as its own visitor."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

import app
from ui import mcp as studio_mcp
from ui.serving import GATE, mcp_caller


@pytest.fixture(scope="module")
def mcp_url(engines):
    demo = app.create_app(engines["tiny"])
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, mcp_server=True,
                            **app.launch_options())  # fmt: skip
    yield url
    demo.close()


def data_url(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


async def call(url: str, tool: str, arguments: dict, headers: dict | None = None) -> tuple[bool, list]:
    """One MCP session (the `mcp` client over Streamable HTTP) making one tool call: (is error, content)."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with (
        streamablehttp_client(url + "gradio_api/mcp/", headers=headers) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool(tool, arguments)
        return result.isError, result.content


def texts(content: list) -> list[str]:
    return [c.text for c in content if c.type == "text"]


def metadata_of(content: list) -> dict:
    """The JSON text that holds the result's metadata (the one with `image_prompts`)."""
    for text in texts(content):
        if text.startswith("{") and "image_prompts" in text:
            return json.loads(text)
    raise AssertionError(f"no metadata in {texts(content)}")


def test_tools_are_listed_over_http_with_descriptions(mcp_url):
    tools = {t["name"]: t for t in httpx.get(mcp_url + "gradio_api/mcp/schema", timeout=30).json()}
    for mode in ("general", "face", "anime", "style"):
        assert {mode, f"{mode}_compare", f"{mode}_preview", f"{mode}_settings", f"{mode}_score"} <= set(tools)
    assert "load_settings" in tools
    general = tools["general"]
    assert general["description"].startswith("General: draw one image from a prompt and reference images.")
    assert "upload_file_to_gradio" not in json.dumps(tools)  # a tool this server does not serve
    properties = general["inputSchema"]["properties"]
    assert "How much of the reference carries over" in properties["strength"]["description"]
    reference = properties["reference"]  # inline: no $defs the validator cannot resolve
    assert "$ref" not in json.dumps(general["inputSchema"]) and reference["items"]["properties"]["image"]["type"] == (
        "string"
    )
    assert tools["general_score"]["inputSchema"]["properties"]["image"]["type"] == "string"


def test_a_tool_call_draws_an_image(mcp_url):
    error, content = asyncio.run(call(mcp_url, "general", {"prompt": "a vase", "steps": 2, "seed": 4}))
    assert not error
    assert any(t.startswith("File: http") and t.endswith(".png") for t in texts(content))
    assert any("base default" in t for t in texts(content))
    assert metadata_of(content)["seed"] == 4


def test_images_as_data_urls_give_the_same_hash_as_the_api(mcp_url, reference_files):
    gold = reference_files["gold"]
    error, content = asyncio.run(
        call(mcp_url, "general", {"prompt": "a vase", "steps": 1, "seed": 4, "reference": [{"image": data_url(gold)}]})
    )
    assert not error, texts(content)
    assert content[0].type == "image"  # the result itself, inline, besides its URL
    via_mcp = metadata_of(content)["references_sha256"]
    via_api = Client(mcp_url, verbose=False).predict(
        prompt="a vase", steps=1, seed=4, reference=[{"image": handle_file(gold)}], api_name="/general"
    )[3]["references_sha256"]
    assert via_mcp == via_api and len(via_mcp) == 1


def test_a_face_photo_and_a_scored_comparison(mcp_url, reference_files):
    alice = data_url(reference_files["alice"])
    error, content = asyncio.run(
        call(mcp_url, "face", {"prompt": "a portrait", "steps": 1, "reference": [{"image": alice}]})
    )
    assert not error, texts(content)
    assert metadata_of(content)["image_prompts"][0]["mode"] == "face"
    gold = data_url(reference_files["gold"])
    error, content = asyncio.run(call(mcp_url, "general_compare", {"prompt": "a vase", "steps": 1, "strengths": "0, 1",
                                                                   "reference": [{"image": gold}]}))  # fmt: skip
    assert not error, texts(content)
    scores = next(json.loads(t) for t in texts(content) if t.startswith("[") and "likeness" in t)
    assert [s["strength"] for s in scores] == [0, 1] and all("adherence" in s for s in scores)
    cells = next(json.loads(t) for t in texts(content) if t.startswith('{"images"'))
    assert [c["caption"] for c in cells["images"]] == ["0", "1"] and cells["images"][0]["url"].startswith("http")


def test_bad_images_get_one_clear_message(mcp_url, caplog):
    cases = {
        "http://127.0.0.1:9/secret.png": "is not a public address",
        "data:text/html;base64,PGI+": "a data URL must be base64 with an image type",
        "data:image/png;base64,***": "not valid base64",
        "/etc/server-photo.png": "Reference 1 was not uploaded to this app",  # a server path: the boundary's answer
    }
    for image, message in cases.items():
        error, content = asyncio.run(call(mcp_url, "general", {"prompt": "x", "reference": [{"image": image}]}))
        assert error and message in " ".join(texts(content)), (image, texts(content))
    assert "Traceback" not in caplog.text


def test_each_mcp_session_is_its_own_visitor(mcp_url, engines, reference_files):
    """Three calls from one agent fill its allowance: its fourth is refused with the reason, another agent gets in;
    and caches are not shared between agents."""
    engine = engines["tiny"]
    gold = data_url(reference_files["gold"])
    args = {"prompt": "x", "steps": 1, "reference": [{"image": gold}]}

    async def scenario() -> tuple:
        from mcp import ClientSession
        from mcp.client.streamable_http import streamablehttp_client

        async with (
            streamablehttp_client(mcp_url + "gradio_api/mcp/") as (read, write, _),
            ClientSession(read, write) as agent,
        ):
            await agent.initialize()
            engine.lock.acquire()  # the GPU is busy: the agent's calls wait in the queue
            try:
                held = [asyncio.create_task(agent.call_tool("general", args)) for _ in range(3)]
                await asyncio.sleep(3)
                fourth = await agent.call_tool("general", args)
                other = asyncio.create_task(call(mcp_url, "general", args))
                await asyncio.sleep(1.5)
                other_waiting = not other.done()
            finally:
                engine.lock.release()
            firsts = await asyncio.gather(*held)
            return fourth, await other, other_waiting, firsts

    fourth, other, other_waiting, firsts = asyncio.run(scenario())
    assert fourth.isError and "You already have 3 requests waiting or running" in " ".join(texts(fourth.content))
    assert other_waiting and not other[0], texts(other[1])  # the other agent was let in, and drew
    assert all(not r.isError for r in firsts)
    assert metadata_of(other[1])["diagnostics"]["cache_hits"] == 0  # the first agent's cached reference is not shared


def test_a_caller_that_hangs_up_does_not_keep_its_job(mcp_url, engines):
    engine = engines["tiny"]
    args = {"prompt": "x", "steps": 1, "seed": 3}
    dropped = GATE.counters["dropped_gone"]

    def mcp_jobs() -> int:
        return sum(mcp_caller(e.request) is not None for e in GATE._held(GATE._queue) if e.alive)

    async def held(n: int) -> None:  # under load an MCP session takes a while to reach the queue
        for _ in range(300):
            if mcp_jobs() >= n:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{mcp_jobs()} MCP jobs in the queue, waited for {n}")

    async def scenario() -> None:
        engine.lock.acquire()
        try:
            ahead = asyncio.create_task(call(mcp_url, "general", args))  # holds the GPU slot, waiting for the lock
            await held(1)
            gone = asyncio.create_task(call(mcp_url, "general", {**args, "seed": 4}))  # queued behind it
            await held(2)
            gone.cancel()  # the agent hangs up: its HTTP request closes
            with pytest.raises(asyncio.CancelledError):
                await gone
            await asyncio.sleep(0.5)
        finally:
            engine.lock.release()
        assert not (await ahead)[0]

    calls = engine.counters["unet_calls"]
    asyncio.run(scenario())
    assert engine.counters["unet_calls"] - calls == 1  # the first call's one step; nothing for the one that left
    for _ in range(100):  # its queue entry goes when its turn comes, on the server's thread: wait for that turn
        if mcp_jobs() == 0:
            break
        time.sleep(0.05)
    assert mcp_jobs() == 0  # nothing of it is left waiting either
    # Dropped by the gate when its turn came (or, if Gradio's client was quicker, cancelled in the queue).
    assert GATE.counters["dropped_gone"] - dropped in (0, 1)


def test_fetching_is_bounded(monkeypatch):
    """URLs are fetched from public addresses only (checked at every hop), at most 25 MB, images only."""
    monkeypatch.setattr(studio_mcp, "MAX_FETCH_BYTES", 1000)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://10.0.0.1/inside.png")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html" if self.path == "/page" else "image/png")
            self.end_headers()
            self.wfile.write(b"x" * (500 if self.path == "/small.png" else 5000))

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    async def loopback_is_public_here(host: str) -> str:  # the test server stands in for a public host
        if host == "127.0.0.1":
            return host
        raise ValueError(f"Hostname {host} failed validation")

    def fetch(path: str) -> tuple[str, bytes]:
        return asyncio.run(studio_mcp.fetch(base + path, "reference 1", validate=loopback_is_public_here))

    try:
        assert fetch("/small.png") == ("image/png", b"x" * 500)
        for path, message in [("/big.png", "over 0 MB"), ("/page", "not an image"),
                              ("/redirect", "'10.0.0.1' is not a public address")]:  # fmt: skip
            with pytest.raises(studio_mcp.McpInputError, match=message):
                fetch(path)
        with pytest.raises(studio_mcp.McpInputError, match="is not a public address"):
            asyncio.run(studio_mcp.fetch(base + "/small.png", "reference 1"))  # the real check: loopback refused
    finally:
        server.shutdown()


def test_behind_a_login_nothing_about_the_api_shows_and_mcp_works_logged_in(engines, reference_files):
    demo = app.create_app(engines["tiny"])
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, mcp_server=True,
                            auth=("ada", "s3cret"), **app.launch_options())  # fmt: skip
    try:
        assert httpx.get(url + "gradio_api/mcp/schema", timeout=10).status_code == 401
        page = httpx.get(url, timeout=10).text
        assert "auth_required" in page and "How much of the reference" not in page and "named_endpoints" not in page
        refused = httpx.post(url + "gradio_api/mcp/", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert refused.status_code == 401 and "This app asks for a login" in refused.json()["error"]
        wrong = {"Authorization": "Basic " + base64.b64encode(b"ada:wrong").decode()}
        assert httpx.get(url + "gradio_api/mcp/schema", headers=wrong, timeout=10).status_code == 401
        login = {"Authorization": "Basic " + base64.b64encode(b"ada:s3cret").decode()}
        assert httpx.get(url + "gradio_api/mcp/schema", headers=login, timeout=10).status_code == 200
        gold = data_url(reference_files["gold"])
        error, content = asyncio.run(
            call(url, "general", {"prompt": "x", "steps": 1, "reference": [{"image": gold}]}, headers=login)
        )
        assert not error, texts(content)
        assert metadata_of(content)["references_sha256"]
        logged_in = httpx.Client()
        assert logged_in.post(url + "login", data={"username": "ada", "password": "s3cret"}).status_code == 200
        assert "named_endpoints" in logged_in.get(url).text  # the page is whole once logged in
    finally:
        demo.close()


def test_the_readme_mcp_example_runs(mcp_url):
    import contextlib
    import io
    import re

    from tests.test_readme import README

    section = README.read_text(encoding="utf-8").split("**MCP:**", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "http://127.0.0.1:7860/gradio_api/mcp/" in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace("http://127.0.0.1:7860/", mcp_url), "README.md", "exec"), {})
    first, second = out.getvalue().splitlines()
    assert first.startswith("File: http") and first.endswith(".png")
    seed, digest = second.split()
    assert seed == "7" and len(digest) == 12


def test_a_structure_slot_through_mcp_with_a_real_image(mcp_url, reference_files):
    """A canny slot sent by an agent: `slots` with `slot_images` as a data URL; the metadata names its ControlNet."""
    arguments = {"prompt": "a vase", "steps": 2, "seed": 4, "slots": [{"mode": "canny", "strength": 1.0}],
                 "slot_images": [{"image": data_url(reference_files["gold"])}]}  # fmt: skip
    error, content = asyncio.run(call(mcp_url, "general", arguments))
    assert not error, texts(content)
    meta = metadata_of(content)
    assert meta["slots"][0]["mode"] == "canny" and meta["image_prompts"][1]["control_type"] == "canny"
    assert meta["image_prompts"][1]["adapter"] == "tiny-controlnet-union" and len(meta["slot_images_sha256"]) == 1


def test_a_pose_slot_through_mcp_with_a_real_image(mcp_url, reference_files):
    """ "Pose of a photo" sent by an agent as a data URL: its map is made and read by the pose ControlNet."""
    arguments = {"prompt": "a dancer", "steps": 2, "seed": 4, "slots": [{"mode": "pose", "strength": 0.9}],
                 "slot_images": [{"image": data_url(reference_files["alice"])}]}  # fmt: skip
    error, content = asyncio.run(call(mcp_url, "general", arguments))
    assert not error, texts(content)
    meta = metadata_of(content)
    assert meta["slots"][0]["mode"] == "pose" and meta["image_prompts"][1]["control_type"] == "pose"
    assert meta["image_prompts"][1]["adapter"] == "tiny-controlnet-union"
    error, content = asyncio.run(
        call(mcp_url, "general_preview", {k: arguments[k] for k in ("prompt", "slots", "slot_images")})
    )
    assert not error and len(json.loads(texts(content)[0])["images"]) == 1, texts(content)  # the pose map


# ------------------------------------------------------------------------------------------- safety III

PROBE = {"name": "probe", "version": "1"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": PROBE}}  # fmt: skip
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _open_session(url: str) -> httpx.Response:
    return httpx.post(url + "gradio_api/mcp/", json=INIT, headers=MCP_HEADERS, timeout=30)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("http://100.100.100.200/latest/x.png", "'100.100.100.200' is not a public address"),
        ("http://100.64.0.1/x.png", "'100.64.0.1' is not a public address"),
        ("http://[2002:a9fe:a9fe::]/x.png", "is not a public address"),
        ("http://[64:ff9b::a9fe:a9fe]/x.png", "is not a public address"),
        ("http://0177.0.0.1/x.png", "'http://0177.0.0.1/x.png' is not a valid http(s) URL"),
        ("http://999.1.1.1/x.png", "'http://999.1.1.1/x.png' is not a valid http(s) URL"),
        ("http://[::1/x.png", "is not a valid http(s) URL"),
    ],
)
def test_inside_addresses_and_broken_urls_get_the_apps_message(mcp_url, image, message):
    error, content = asyncio.run(call(mcp_url, "general_preview", {"prompt": "x", "reference": [{"image": image}]}))
    assert error and message in " ".join(texts(content)), texts(content)


def test_sessions_per_address_are_bounded_and_unused_ones_close(mcp_url, monkeypatch):
    from ui.mcp import SESSIONS

    monkeypatch.setattr(SESSIONS, "per_ip", 3 + SESSIONS.held("127.0.0.1"))
    opened = [_open_session(mcp_url) for _ in range(3)]
    assert all(r.status_code == 200 for r in opened)
    refused = _open_session(mcp_url)
    assert refused.status_code == 429 and "This address already has" in refused.json()["error"]
    assert "mcp-session-id" not in refused.headers
    monkeypatch.setattr(SESSIONS, "first_call_s", 0.2)  # sessions that never called a tool are closed ...
    time.sleep(0.5)
    again = _open_session(mcp_url)  # ... when another one is asked for
    assert again.status_code == 200
    gone = opened[0].headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    headers = {**MCP_HEADERS, "mcp-session-id": gone, "mcp-protocol-version": "2025-06-18"}
    answer = httpx.post(mcp_url + "gradio_api/mcp/", json=ping, timeout=10, headers=headers)
    assert answer.status_code == 404  # its client opens a new session, as the MCP specification says
    assert SESSIONS.counters["closed_unused"] >= 3


def test_calls_in_flight_per_address_are_bounded(mcp_url, engines, monkeypatch):
    from ui.mcp import SESSIONS

    monkeypatch.setattr(SESSIONS, "calls_per_ip", 2)
    args = {"prompt": "x", "steps": 1}

    async def scenario() -> tuple:
        engine = engines["tiny"]
        engine.lock.acquire()
        try:
            held = [asyncio.create_task(call(mcp_url, "general", args)) for _ in range(2)]
            steady = 0  # both tool calls held on the engine lock: the count stays at 2 (their session set-up
            for _ in range(600):  # POSTs pass it briefly); on a loaded CI machine this took more than 10 s
                steady = steady + 1 if sum(SESSIONS._posts.values()) >= 2 else 0
                if steady >= 10:
                    break
                await asyncio.sleep(0.1)
            assert sum(SESSIONS._posts.values()) >= 2, dict(SESSIONS._posts)
            async with httpx.AsyncClient() as http:
                third = await http.post(mcp_url + "gradio_api/mcp/", json=INIT, headers=MCP_HEADERS, timeout=10)
        finally:
            engine.lock.release()
        return third, await asyncio.gather(*held)

    third, firsts = asyncio.run(scenario())
    assert third.status_code == 429 and "MCP requests in flight" in third.json()["error"]
    assert all(not error for error, _ in firsts)


def test_data_urls_are_counted_before_any_is_decoded(mcp_url, monkeypatch, tmp_path):
    from gradio.utils import get_upload_folder

    from ui import mcp as door

    monkeypatch.setattr(door, "MAX_BYTES_PER_REQUEST", 2**20)  # 64 MB when served
    big = "data:image/png;base64," + base64.b64encode(b"\0" * (400 * 2**10)).decode()
    folders = set(Path(get_upload_folder()).glob("mcp-*"))
    error, content = asyncio.run(call(mcp_url, "general", {"prompt": "x", "reference": [{"image": big}] * 3}))
    assert error and "may add up to 1 MB at most; these data URLs hold about 1 MB" in " ".join(texts(content))
    assert set(Path(get_upload_folder()).glob("mcp-*")) == folders  # nothing was decoded or written
    assert door.MAX_MCP_BODY_BYTES < 96 * 2**20  # the body cap follows the request's file cap
    import socket

    parsed = httpx.URL(mcp_url)
    with socket.create_connection((parsed.host, parsed.port), timeout=10) as conn:  # declared, never sent
        conn.sendall(f"POST /gradio_api/mcp/ HTTP/1.1\r\nHost: {parsed.host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {door.MAX_MCP_BODY_BYTES + 1}\r\n\r\n".encode())  # fmt: skip
        assert conn.recv(4096).startswith(b"HTTP/1.1 413")
