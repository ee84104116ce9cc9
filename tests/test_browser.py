"""End to end in a real browser: headless Chromium (Debian's `chromium`) driven by the `playwright` package.

Screenshots of each tab are kept in `artifacts/browser/`. Skipped (with the reason) where Chromium is not
installed; `.ci/run` installs it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "browser"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip
TABS = {"general": "General", "face": "Consistent face", "anime": "Anime character", "style": "Style"}

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Chromium is not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def open_app(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_role("tab", name="General").wait_for()
    return page


@pytest.fixture(scope="module")
def page(browser, app_url):
    return open_app(browser, app_url)


@pytest.fixture
def fresh(browser, app_url):
    """A page as a new visitor sees it."""
    page = open_app(browser, app_url)
    yield page
    page.close()


@pytest.fixture(scope="module")
def files(reference_files):
    return reference_files


def settle(page, values: dict) -> None:
    """Type into text boxes until each one holds its text (on a loaded CI machine a box inside a just-opened
    accordion once lost what was typed before the click that read it)."""
    for _ in range(20):
        for box, text in values.items():
            if box.input_value() != text:
                box.fill(text)
                box.press("Tab")
        page.wait_for_timeout(200)
        if all(box.input_value() == text for box, text in values.items()):
            return
    raise AssertionError(f"the text boxes would not keep {list(values.values())}")


@pytest.mark.parametrize("mode", list(TABS))
def test_each_tab_draws_an_image(page, files, mode):
    page.get_by_role("tab", name=TABS[mode]).click()
    panel = page.locator(f"#tab-{mode}")
    panel.locator("input[type=file]").first.set_input_files(files["alice" if mode == "face" else "gold"])
    panel.get_by_role("button", name="Start drawing").click()
    image = page.locator(f"#{mode}-result img")
    image.wait_for(state="visible")
    assert "/file=" in (image.get_attribute("src") or "")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{mode}.png"), full_page=True)


def test_comparison_shows_the_grid(page, files):
    page.get_by_role("tab", name="General").click()
    panel = page.locator("#tab-general")
    panel.locator("#general-reference input[type=file]").set_input_files(files["gold"])  # scores need a reference
    panel.locator("#general-reference img").first.wait_for(state="visible")
    panel.get_by_text("Compare strengths (same seed, one batched pass)").click()
    panel.get_by_role("button", name="Compare strengths", exact=True).click()
    cells = page.locator("#general-cells img")
    cells.nth(4).wait_for(state="visible")
    assert cells.count() >= 5
    caption = panel.get_by_text("0.75", exact=True).first
    assert caption.evaluate("e => e.scrollWidth <= e.clientWidth")  # the whole caption shows, not "0.…"
    fit = cells.first.evaluate("e => getComputedStyle(e).objectFit")
    assert fit == "contain"  # cells are never cropped
    blank = page.locator("#general-cells").evaluate(
        "g => g.getBoundingClientRect().bottom - Math.max(...[...g.querySelectorAll('img')].map("
        "i => i.getBoundingClientRect().bottom))"
    )
    assert blank < 60, blank  # the gallery ends under its one row of cells
    page.locator("#general-plot img").wait_for(state="visible")  # the scores against strength, beside the grid
    page.locator("#general-suggested").get_by_text("Suggested:").or_(
        page.locator("#general-suggested").get_by_text("Too close to call")
    ).first.wait_for()  # the suggestion in a sentence, not raw JSON
    page.screenshot(path=str(ARTIFACTS / "general-compare.png"), full_page=True)


def test_a_crafted_settings_file_shows_as_text_not_markup(page, tmp_path):
    """The error toast renders HTML: a settings file's markup must come out as the characters it is."""
    import json

    crafted = tmp_path / "crafted.json"
    crafted.write_text(json.dumps({"mode": "general", "variant": "<img src=x id=injected><b>bold</b>"}))
    page.get_by_text("Load settings (a PNG made here, or a settings file)").click()
    page.locator("input[type=file][accept*='.json']").set_input_files(str(crafted))
    toast = page.get_by_test_id("toast-body").filter(has_text="This settings file is not valid")
    toast.first.wait_for(state="visible")
    assert "<img src=x id=injected><b>bold</b>" in toast.first.inner_text()
    assert page.locator("#injected").count() == 0 and toast.first.locator("b").count() == 0
    assert page.locator("#tab-general").get_by_text("Error", exact=True).count() == 0  # controls left untouched
    page.screenshot(path=str(ARTIFACTS / "crafted-settings.png"), full_page=True)


def test_a_new_visitor_sees_no_stale_values_and_only_controls_that_apply(fresh):
    assert not fresh.locator("#general-seed-used").is_visible()  # no "Seed used: 0" before a run
    fresh.get_by_role("tab", name="Consistent face").click()
    face = fresh.locator("#tab-face")
    face.get_by_text("Settings", exact=True).click()
    structure = face.get_by_text("Structure (FaceID Plus v2", exact=False)
    assert structure.count() == 0 or not structure.first.is_visible()  # plain FaceID (the tiny default): hidden
    face.get_by_text("FaceID Plus v2 (identity + face structure)").click()
    structure.first.wait_for(state="visible")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    fresh.screenshot(path=str(ARTIFACTS / "face-structure-shown.png"), full_page=True)


def test_what_the_adapter_sees_follows_the_references_and_crop(fresh, files):
    panel = fresh.locator("#tab-general")
    preview = fresh.locator("#general-preview")
    tall = ARTIFACTS / "tall.png"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.new("RGB", (60, 180), (20, 160, 220)).save(tall)
    panel.locator("input[type=file]").first.set_input_files(str(tall))
    first = preview.locator("img").first
    first.wait_for(state="visible")  # drawn without pressing "Show what the adapter sees"
    before = first.get_attribute("src")
    panel.get_by_text("Settings", exact=True).click()
    panel.get_by_text("Pad to square").click()
    for _ in range(100):
        if preview.locator("img").first.get_attribute("src") != before:
            break
        fresh.wait_for_timeout(100)
    assert preview.locator("img").first.get_attribute("src") != before  # redrawn for the new crop
    fresh.screenshot(path=str(ARTIFACTS / "adapter-view-pad.png"), full_page=True)


def test_size_sliders_stay_in_the_pixel_budget(fresh):
    panel = fresh.locator("#tab-general")
    panel.get_by_text("Settings", exact=True).click()
    height = panel.get_by_label("number input for Height")
    width = panel.get_by_label("number input for Width")
    height.fill("128")
    height.press("Enter")
    width.fill("256")
    width.press("Enter")
    for _ in range(100):
        if height.input_value() == "64":
            break
        fresh.wait_for_timeout(100)
    assert int(width.input_value()) * int(height.input_value()) <= 128 * 128  # the tiny preset's budget
    assert panel.get_by_text("width x height at most 16,384 pixels (about 128²)").count() == 2  # said where it acts
    fresh.screenshot(path=str(ARTIFACTS / "size-budget.png"), full_page=True)


def test_the_ab_slider_says_which_side_is_which(page):
    page.get_by_role("tab", name="General").click()
    panel = page.locator("#tab-general")
    box = panel.get_by_label("Strengths (comma-separated; two give an A/B slider)")
    if not box.is_visible():  # run alone, no earlier test opened the comparison
        panel.get_by_text("Compare strengths (same seed, one batched pass)").click()
    settle(page, {box: "0, 1"})
    panel.get_by_role("button", name="Compare strengths", exact=True).click()
    panel.get_by_text("A/B: left = strength 0, right = strength 1").wait_for(state="visible")
    page.screenshot(path=str(ARTIFACTS / "general-ab.png"), full_page=True)


def test_clicking_an_example_shows_its_result(fresh):
    fresh.get_by_role("tab", name="Style").click()
    panel = fresh.locator("#tab-style")
    panel.get_by_text("a lighthouse on a cliff", exact=True).click()
    image = fresh.locator("#style-result img")
    image.wait_for(state="visible")
    assert "/file=" in (image.get_attribute("src") or "")
    fresh.screenshot(path=str(ARTIFACTS / "style-example.png"), full_page=True)


def test_two_people_in_a_style_through_the_ui(fresh, files):
    """Face tab + two added image prompts ("Add an image prompt"): a second face on the right, and a style."""
    page = fresh
    page.get_by_role("tab", name=TABS["face"]).click()
    panel = page.locator("#tab-face")
    panel.locator("#face-reference input[type=file]").set_input_files(files["alice"])
    panel.get_by_text("This tab's image prompt acts on").locator("..").get_by_text("Left half").click()
    panel.get_by_text("Add an image prompt (a face, a style").click()
    page.locator("#face-slot1-mode").get_by_text("A face").click()
    adapter = page.locator("#face-slot1").get_by_label("Its adapter")
    page.wait_for_timeout(500)
    adapter.click()  # only the face kind's adapters, by their labels
    options = [o.replace("✓", "").strip() for o in page.get_by_role("option").all_inner_texts()]  # ✓: chosen
    assert options == ["FaceID (identity only)", "FaceID Plus v2 (identity + face structure)"], options
    page.keyboard.press("Escape")
    page.locator("#face-slot1 ").get_by_text("Right half").click()
    page.locator("#face-slot1-images input[type=file]").set_input_files(files["alice"])
    page.locator("#face-slot2-mode").get_by_text("A style").click()
    page.locator("#face-slot2-images input[type=file]").set_input_files(files["gold"])
    page.locator("#face-slot2-images img").first.wait_for(state="visible")
    panel.get_by_role("button", name="Start drawing").click()
    page.locator("#face-seed-used").wait_for(state="visible")  # several inputs changed: one preview job, one run
    page.locator("#face-result").scroll_into_view_if_needed()  # the result loads lazily once it is in view
    page.locator("#face-result img").wait_for(state="visible")
    panel.get_by_text("Metadata (also stored in the PNG)").click()
    metadata = page.locator("#face-metadata")
    metadata.get_by_text('"image_prompts"').first.wait_for()
    text = "".join(metadata.inner_text().split())  # the JSON view puts every token on its own line
    assert text.count('"mode":"face"') >= 3 and '"mode":"style"' in text  # the tab's, slot 1's in image_prompts
    assert '"right"' in text and '"left"' in text
    preview = page.locator("#face-preview img")
    preview.nth(4).wait_for(state="visible")  # two faces (box and crop each), then the style as CLIP sees it
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "two-faces-and-style.png"), full_page=True)


def drawn_metadata(page, panel) -> str:
    """Draw on the General tab and read the result's metadata (a structure slot's: it names its control type),
    without whitespace."""
    panel.get_by_role("button", name="Start drawing").click()
    page.locator("#general-seed-used").wait_for(state="visible")
    page.locator("#general-result").scroll_into_view_if_needed()
    page.locator("#general-result img").wait_for(state="visible")
    panel.get_by_text("Metadata (also stored in the PNG)").click()
    metadata = page.locator("#general-metadata")
    metadata.get_by_text('"control_type"').first.wait_for()
    return "".join(metadata.inner_text().split())


def test_edges_of_a_photo_through_the_ui(fresh, files):
    """General tab + "Edges of a photo" in "Add an image prompt": the structure kind hides the adapter and region
    controls, the preview shows the edge map, and the result's metadata names the canny ControlNet."""
    page = fresh
    panel = page.locator("#tab-general")
    panel.locator("#general-reference input[type=file]").set_input_files(files["gold"])
    panel.get_by_text("Add an image prompt (a face, a style").click()
    page.locator("#general-slot1-mode").get_by_text("Edges of a photo").click()
    slot = page.locator("#general-slot1")
    slot.get_by_label("Its adapter").wait_for(state="hidden")  # no adapter, the whole image, no map type to pick
    assert (
        not slot.get_by_text("It acts on").is_visible() and not page.locator("#general-slot1-control-type").is_visible()
    )
    page.locator("#general-slot1-images input[type=file]").set_input_files(files["alice"])
    page.locator("#general-slot1-images img").first.wait_for(state="visible")
    preview = page.locator("#general-preview img")
    preview.nth(1).wait_for(state="visible")  # what CLIP sees of the reference, then the edge map
    text = drawn_metadata(page, panel)
    assert '"mode":"canny"' in text and '"control_type":"canny"' in text and "tiny-controlnet-union" in text
    page.locator("#general-slot1-mode").get_by_text("A control map (pose, sketch...)").click()
    page.locator("#general-slot1-control-type").wait_for(state="visible")  # a ready map: say what it shows
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "edges-of-a-photo.png"), full_page=True)


def test_pose_of_a_photo_through_the_ui(fresh, files):
    """ "Pose of a photo" in "Add an image prompt": no adapter or map type to pick, the preview shows the pose map,
    and the result's metadata names the pose map and its ControlNet."""
    page = fresh
    panel = page.locator("#tab-general")
    panel.get_by_text("Add an image prompt (a face, a style").click()
    page.locator("#general-slot1-mode").get_by_text("Pose of a photo").click()
    slot = page.locator("#general-slot1")
    slot.get_by_label("Its adapter").wait_for(state="hidden")
    assert not page.locator("#general-slot1-control-type").is_visible()
    page.locator("#general-slot1-images input[type=file]").set_input_files(files["alice"])
    page.locator("#general-slot1-images img").first.wait_for(state="visible")
    page.locator("#general-preview img").last.wait_for(state="visible")  # the pose map
    text = drawn_metadata(page, panel)
    assert '"mode":"pose"' in text and '"control_type":"pose"' in text and "tiny-controlnet-union" in text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "pose-of-a-photo.png"), full_page=True)


def test_fast_mode_through_the_ui(fresh, files):
    """The speed switch: fast hides the steps and guidance sliders (the LoRA has its own) and draws in fast mode."""
    page = fresh
    panel = page.locator("#tab-general")
    panel.locator("input[type=file]").first.set_input_files(files["gold"])
    panel.get_by_text("Settings", exact=True).click()
    steps = page.locator("#general-steps")
    steps.wait_for(state="visible")
    page.locator("#general-speed").get_by_text("Fast (4 steps").click()
    steps.wait_for(state="hidden")
    panel.get_by_role("button", name="Start drawing").click()
    page.locator("#general-result img").wait_for(state="visible")
    page.get_by_text("fast · ").first.wait_for()  # the diagnostics line says which speed drew it


WHOLE = """(gallery) => [...gallery.querySelectorAll('img')].map(img => {
  const r = img.getBoundingClientRect(), g = gallery.getBoundingClientRect();
  return {inside: r.top >= g.top - 1 && r.bottom <= g.bottom + 1 && r.left >= g.left - 1 && r.right <= g.right + 1,
          fit: getComputedStyle(img).objectFit, height: r.height};
})"""


def test_strips_show_whole_images(fresh, files):
    """What the adapter sees and the reference strip: every picture whole inside its strip (none cut by a height)."""
    page = fresh
    page.get_by_role("tab", name=TABS["face"]).click()
    panel = page.locator("#tab-face")
    panel.locator("#face-reference input[type=file]").set_input_files([files["alice"], files["alice"]])
    preview = page.locator("#face-preview")
    preview.locator("img").nth(1).wait_for(state="visible")
    for gallery in (preview, page.locator("#face-reference")):
        gallery.scroll_into_view_if_needed()
        boxes = gallery.evaluate(WHOLE)
        assert boxes and all(b["inside"] and b["fit"] == "contain" and b["height"] > 40 for b in boxes), boxes
    page.screenshot(path=str(ARTIFACTS / "strips.png"), full_page=True)


def test_a_two_dimensional_comparison_shows_every_row_and_whole_captions(fresh, files):
    page = fresh
    panel = page.locator("#tab-general")
    panel.locator("#general-reference input[type=file]").set_input_files(files["gold"])
    panel.get_by_text("Add an image prompt (a face, a style").click()
    page.locator("#general-slot1-mode").get_by_text("A style").click()
    page.locator("#general-slot1-images input[type=file]").set_input_files(files["gold"])
    page.locator("#general-slot1-images img").first.wait_for(state="visible")
    panel.get_by_text("Compare strengths (same seed, one batched pass)").click()
    rows = panel.get_by_label("Strengths (comma-separated; two give an A/B slider)")
    columns = panel.get_by_label("Strengths of the first added image prompt")
    settle(page, {rows: "0, 1", columns: "0, 0.5, 1"})
    panel.get_by_role("button", name="Compare strengths", exact=True).click()
    cells = page.locator("#general-cells")
    cells.locator("img").nth(5).wait_for(state="visible")
    cells.scroll_into_view_if_needed()
    boxes = cells.evaluate(WHOLE)
    assert len(boxes) == 6 and all(b["inside"] for b in boxes), boxes  # both rows, no inner scroll hides one
    captions = cells.locator(".caption-label")
    assert captions.count() == 6
    for i in range(captions.count()):
        assert captions.nth(i).evaluate("e => e.scrollWidth <= e.clientWidth"), captions.nth(i).inner_text()
    page.screenshot(path=str(ARTIFACTS / "general-2d.png"), full_page=True)


def test_an_error_stays_next_to_the_result_until_the_next_run(fresh, files):
    """A refused run: its message stays beside the result (no vanishing toast, no red "Error" on every box); the
    automatic preview and the button say it once, in the same place; a good run clears it."""
    page = fresh
    page.get_by_role("tab", name=TABS["face"]).click()
    panel = page.locator("#tab-face")
    panel.locator("#face-reference input[type=file]").set_input_files(files["gold"])  # no face in it
    box = page.locator("#face-error")
    box.get_by_text("No face found in reference 1").wait_for()  # from the automatic preview
    panel.get_by_role("button", name="Start drawing").click()
    page.wait_for_timeout(3000)
    box.get_by_text("No face found in reference 1").wait_for()  # the run says the same, in the same place
    assert box.get_by_text("No face found").count() == 1
    assert panel.get_by_text("Error", exact=True).count() == 0  # no red pill on the outputs
    assert page.get_by_test_id("toast-body").filter(has_text="No face found").count() == 0
    panel.locator("#face-reference").get_by_role("button", name="Clear").first.click()
    panel.locator("#face-reference input[type=file]").set_input_files(files["alice"])
    panel.get_by_role("button", name="Start drawing").click()
    page.locator("#face-seed-used").wait_for(state="visible")
    box.get_by_text("No face found").wait_for(state="detached")  # fixed: the message is gone


def test_stop_leaves_a_running_drawing_and_says_where(fresh, files, engines):
    """The page's Stop: the drawing leaves at its next step, the box says which, and the next drawing runs."""
    from tests.test_stop import slow_steps

    page = fresh
    panel = page.locator("#tab-general")
    box = page.locator("#general-error")
    panel.get_by_role("button", name="Stop").first.click()
    box.get_by_text("Nothing of yours is running.").wait_for()
    panel.locator("input[type=file]").first.set_input_files(files["gold"])
    panel.get_by_text("Settings", exact=True).click()
    steps = page.locator("#general-steps input[type=number]")
    steps.fill("50")
    steps.press("Tab")
    engine = engines["tiny"]
    with slow_steps(engine):
        calls = engine.counters["unet_calls"]
        panel.get_by_role("button", name="Start drawing").click()
        for _ in range(600):
            if engine.counters["unet_calls"] - calls >= 4:
                break
            page.wait_for_timeout(50)
        panel.get_by_role("button", name="Stop").first.click()
        box.get_by_text("Stopped after step").wait_for()
        assert engine.counters["unet_calls"] - calls < 2 * 50
    steps.fill("2")
    steps.press("Tab")
    panel.get_by_role("button", name="Start drawing").click()
    page.locator("#general-seed-used").wait_for(state="visible")
    box.get_by_text("Stopped after step").wait_for(state="detached")


def test_klein_draws_and_compares_through_the_ui(browser, families, tiny_root, files):
    """FLUX.2 [klein] on the page: its own introduction and licence, no guidance slider (the model reads none), a
    drawing with a reference and a comparison of its strength."""
    import app
    from pipelines import Engine

    demo = app.create_app(Engine(families["tiny-flux2-klein"], tiny_root=tiny_root))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **app.launch_options())
    page = open_app(browser, url)
    try:
        panel = page.locator("#tab-general")
        panel.get_by_text("FLUX.2 [klein] reads the reference images themselves").wait_for()
        panel.get_by_text("Apache-2.0").wait_for()
        assert page.get_by_role("tab", name="Consistent face").count() == 0
        assert page.locator("#general-guidance").is_hidden()
        panel.locator("input[type=file]").first.set_input_files(files["gold"])
        panel.get_by_role("button", name="Start drawing").click()
        page.locator("#general-result img").wait_for(state="visible")
        panel.get_by_text("Compare strengths (same seed", exact=False).click()
        panel.get_by_role("button", name="Compare strengths", exact=True).click()
        page.locator("#general-cells img").first.wait_for(state="visible")
        assert page.locator("#general-cells img").count() == 5
    finally:
        page.close()
        demo.close()
