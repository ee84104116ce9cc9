"""The tab builder stays small: parts, not one long function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_function_in_the_tab_builder_is_over_80_lines():
    tree = ast.parse((ROOT / "ui" / "tab.py").read_text())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 80}  # fmt: skip
    assert not long, long


def test_page_messages_use_the_controls_labels_and_the_api_keeps_keywords():
    """Through the API a message names the keyword; on the page, the control's label (from the same table)."""
    import gradio as gr

    from pipelines.codec import build_request
    from pipelines.errors import InvalidRequestError
    from pipelines.presets import preset_for
    from ui import tab

    preset = preset_for("general", "tiny")
    messages = []
    for values in ({"strengths": "0, abc"}, {"start_at": 1.0, "stop_at": 1.0},
                   {"slots": [{"mode": "style", "strength": 9}], "slot_images": ["x"]}):  # fmt: skip
        try:
            build_request(preset, prompt="x", **values)
        except InvalidRequestError as e:
            messages.append(str(e))
    assert messages[0] == "strengths must be a number, got 'abc'"  # the API's words: keyword names
    with gr.Blocks():
        c = tab.prompt_group(preset, tab.TabText("General", "", "Reference images", "Strength"), None)
        c.update(tab.slot_groups(preset))
        tab.compare_panel(preset, c)
        tab.settings_group(preset, c)
    words = [tab.in_page_words(m, tab.page_labels(c)) for m in messages]
    assert words[0] == "“Strengths” must be a number, got 'abc'"
    assert words[1].startswith("“Start at” (1) must be below “Stop at” (1)")
    assert words[2] == "image prompt 2: “Its strength” = 9.0 is outside [0.0, 1.5]"


def test_the_gpu_time_estimate_counts_controlnet_slots():
    """ZeroGPU reserves what the estimate says: a ControlNet slot (page group or API `slots`) adds to each step."""
    from types import SimpleNamespace

    from pipelines.presets import preset_for
    from ui.endpoints import gpu_time

    preset = preset_for("general", "sdxl")
    estimate = gpu_time(SimpleNamespace(family=SimpleNamespace(pipeline="sdxl")), preset, 1)
    plain = estimate({"steps": 30, "width": 1024, "height": 1024}, None)
    page = estimate({"steps": 30, "width": 1024, "height": 1024, "slot1_mode": "depth"}, None)
    api = estimate(
        {"steps": 30, "width": 1024, "height": 1024, "slots": '[{"mode": "canny"}, {"mode": "start"}]'}, None
    )
    assert plain < page == api  # a start image costs no more per step; a bad `slots` value is the request's to refuse
    assert estimate({"steps": 30, "width": 1024, "height": 1024, "slots": "not json"}, None) == plain
