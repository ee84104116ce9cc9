"""Requests are validated in one place, with messages that name the parameter."""

from __future__ import annotations

import math
import re

import pytest

from pipelines import InvalidRequestError, build_request


@pytest.fixture
def preset(presets):
    return presets["general"]["tiny"]


def test_defaults_come_from_the_preset(preset):
    r = build_request(preset, prompt="a cat")
    s = r.settings
    assert (r.primary.strength, s.steps, s.guidance, s.width, s.height) == (0.5, 4, 5.0, 64, 64)
    assert r.primary.variant == "plain" and s.negative_prompt == preset.negative_prompt and r.primary.references == ()
    assert r.slots == () and r.sweep.strengths == ()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("strength", math.nan, "strength must be a finite number"),
        ("strength", 1.6, "strength = 1.6 is outside [0.0, 1.5]"),
        ("steps", 0, "steps = 0 is outside [1, 50]"),
        ("steps", 2.5, "steps must be a whole number"),
        ("guidance", "lots", "guidance must be a number, got 'lots'"),
        ("width", 4000, "width = 4000 is outside [32, 256]"),
        ("seed", -5, "seed = -5 is outside [0, 4294967295]"),
        ("seed", 2**40, "is outside [0, 4294967295]"),
        ("variant", "mega", "variant 'mega' is not one of ['plain', 'plus']"),
        ("prompt", 42, "prompt must be text"),
    ],
)
def test_bad_values_are_named(preset, field, value, message):
    kwargs = {"prompt": "a cat", field: value}
    with pytest.raises(InvalidRequestError, match=re.escape(message)) as err:
        build_request(preset, **kwargs)
    assert err.value.field == field


def test_sizes_snap_to_multiples_of_8(preset):
    r = build_request(preset, prompt="x", width=101, height=70)
    assert (r.settings.width, r.settings.height) == (96, 64)


def test_control_characters_are_dropped(preset):
    r = build_request(preset, prompt="  a\x00 cat\x1b 🐱\nin snow  ")
    assert r.settings.prompt == "a cat 🐱\nin snow"


def test_too_many_references(preset, gold):
    with pytest.raises(InvalidRequestError, match="at most 8 images per input"):
        build_request(preset, prompt="x", references=[gold] * 9)


def test_prompts_have_a_length_limit_checked_before_tokenising(preset):
    from pipelines.request import MAX_PROMPT_CHARS

    build_request(preset, prompt="x" * MAX_PROMPT_CHARS)
    with pytest.raises(InvalidRequestError, match="The prompt is 2,001 characters long; at most 2,000"):
        build_request(preset, prompt="x" * (MAX_PROMPT_CHARS + 1))
    with pytest.raises(InvalidRequestError, match="The negative prompt is 100,000 characters long"):
        build_request(preset, prompt="x", negative_prompt="y" * 100_000)


def test_messages_never_echo_a_whole_payload(preset):
    with pytest.raises(InvalidRequestError) as err:
        build_request(preset, prompt="x", variant="v" * 10_000)
    assert len(str(err.value)) < 200
