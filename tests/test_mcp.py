"""`python app.py --mcp`: every endpoint is an MCP tool with a description a model can use."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import app


@pytest.fixture(scope="module")
def mcp_url(engines):
    demo = app.create_app(engines["tiny"])
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, mcp_server=True,
                            **app.launch_options())  # fmt: skip
    yield url
    demo.close()


def test_tools_are_listed_over_http_with_descriptions(mcp_url):
    tools = {t["name"]: t for t in httpx.get(mcp_url + "gradio_api/mcp/schema", timeout=30).json()}
    for mode in ("general", "face", "anime", "style"):
        assert {mode, f"{mode}_compare", f"{mode}_preview", f"{mode}_settings"} <= set(tools)
    assert "load_settings" in tools
    general = tools["general"]
    assert general["description"].startswith("General: draw one image from a prompt and reference images.")
    properties = general["inputSchema"]["properties"]
    assert "How much of the reference carries over" in properties["strength"]["description"]


def test_a_tool_call_draws_an_image(mcp_url):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def call() -> str:
        async with (
            streamablehttp_client(mcp_url + "gradio_api/mcp/") as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            names = [t.name for t in (await session.list_tools()).tools]
            assert "general" in names and "set_base" not in names
            result = await session.call_tool("general", {"prompt": "a vase", "steps": 2, "seed": 4})
            assert not result.isError
            return str(result.content)

    text = asyncio.run(call())
    assert ".png" in text and "base default" in text
