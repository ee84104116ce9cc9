"""The serving boundary's parts on their own: upload checks, output folder, escaping, the listener gate."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from gradio.utils import get_upload_folder

from ui.common import format_diagnostics
from ui.serving import (
    ClientGate,
    ClientGoneError,
    OutputStore,
    UploadBudget,
    UploadRefusedError,
    as_code,
    escape,
    uploaded_file,
)


@pytest.fixture
def upload(tmp_path):
    folder = Path(get_upload_folder()) / f"unit-{os.getpid()}-{time.monotonic_ns()}"
    folder.mkdir(parents=True)
    path = folder / "ref.png"
    path.write_bytes(b"\x89PNG data")
    yield path
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


def test_uploaded_files_pass_and_nothing_else_does(upload, tmp_path):
    assert uploaded_file(str(upload), "reference 1") == (os.path.realpath(upload), upload.stat().st_size)
    outside = tmp_path / "x.png"
    outside.write_bytes(b"data")
    (upload.parent / "link.png").symlink_to(outside)
    traversal = str(upload.parent / ".." / ".." / outside.relative_to("/"))
    for raw in [str(outside), str(upload.parent / "link.png"), traversal, "ref.png", "", "a\0b", 5, None,
                str(upload.parent), get_upload_folder(), str(upload.parent / "missing.png")]:  # fmt: skip
        with pytest.raises(UploadRefusedError, match=r"^Reference 1 was not uploaded to this app\. Upload"):
            uploaded_file(raw, "reference 1")


def test_one_request_has_file_caps(upload):
    budget = UploadBudget(max_files=3)
    assert budget.take([(str(upload), None), {"path": str(upload)}], "reference") == [os.path.realpath(upload)] * 2
    with pytest.raises(Exception, match="At most 3 files per request"):
        budget.take([str(upload), str(upload)], "face close-up", "face_reference")
    with pytest.raises(Exception, match="At most 1 files for image to score, got 2"):
        UploadBudget().take([str(upload), str(upload)], "image to score", "image")
    with pytest.raises(Exception, match="At most 8 files for reference, got 9"):  # counted before any is opened
        UploadBudget().take(["/etc/hostname"] * 9, "reference", "reference")


def test_the_file_cap_is_derived_from_the_inputs_a_request_may_have():
    from pipelines.parameters import MAX_FILES_PER_REQUEST, MAX_IMAGES_PER_INPUT, MAX_SLOTS, max_files, parameters_for

    # The anime tab takes references, face close-ups, an extra prompt's references, negative images, and the slots'.
    assert max_files(parameters_for("anime", "single")) == (4 + MAX_SLOTS) * MAX_IMAGES_PER_INPUT
    assert max_files(["reference", "slot1_images", "slot3_images"]) == 3 * MAX_IMAGES_PER_INPUT  # the page's groups
    assert max_files(parameters_for("general", "score")) == 2 * MAX_IMAGES_PER_INPUT + 1  # + the image to score
    assert max(max_files(parameters_for(m, "compare")) for m in ("general", "anime")) == MAX_FILES_PER_REQUEST


def test_output_folder_is_bounded_by_count_and_age():
    store = OutputStore(max_age_s=60, max_files=5)
    for _ in range(12):
        store.path("image").write_bytes(b"x")
    assert len(store.files()) == 5
    old = store.files()[0]
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert store.prune() >= 1 and not old.exists()


def test_user_text_is_never_markup():
    assert escape('<img src=x onerror="alert(1)">') == '&lt;img src=x onerror="alert(1)"&gt;'
    assert as_code("see [this](http://x) `now`\n<b>") == "`see [this](http://x) 'now' <b>`"
    diagnostics = {"seconds": 1.0, "steps_per_second": 4, "base": "default", "unet_calls": 4, "encoder_calls": 1,
                   "cache_hits": 0, "batch_size": 1, "batches": 1, "device": "cpu"}  # fmt: skip
    text = format_diagnostics(diagnostics, ["The prompt ... ignored: '![](http://x/t.png) <script>'"])
    assert "⚠️ `The prompt ... ignored: '![](http://x/t.png) <script>'`" in text  # a code span: shown literally


def test_a_job_without_a_listener_is_dropped_after_the_grace():
    gate = ClientGate()
    gate.check_listening("s1", grace_s=0.01)  # served without the middleware: nothing is known, nothing dropped
    gate.tracking = True
    with pytest.raises(ClientGoneError):
        gate.check_listening("s1", grace_s=0.05)
    gate._opened("s1")
    gate.check_listening("s1", grace_s=0.05)
    gate._closed("s1")
    gate._accepted("rest-job", rest=True)  # a REST `/call/` job: its caller fetches the result later
    gate.check_listening("rest-job", grace_s=0.01)
    assert gate.counters["dropped_gone"] == 1
