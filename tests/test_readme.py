"""The README tells the truth: its API example runs verbatim against the README's own run command."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

README = Path(__file__).resolve().parent.parent / "README.md"


def api_example() -> str:
    """The first Python block of the README's API section."""
    section = README.read_text(encoding="utf-8").split("## The API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_api_example_runs_against_the_tiny_app(app_url, tmp_path, monkeypatch):
    code = api_example()
    assert 'Client("http://127.0.0.1:7860/")' in code  # the address `python app.py` prints
    Image.new("RGB", (96, 80), (212, 175, 55)).save(tmp_path / "gold.png")  # "any picture saved as gold.png"
    command = re.search(r"`python -m pipelines\.offline\.faces ([\w. ]+)`", README.read_text(encoding="utf-8"))
    subprocess.run([sys.executable, "-m", "pipelines.offline.faces", *command.group(1).split()], cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(README.parent)}, check=True, capture_output=True)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace("http://127.0.0.1:7860/", app_url), "README.md", "exec"), {})
    lines = [line for line in out.getvalue().splitlines() if not line.startswith("Loaded as API")]
    assert lines[0].endswith(".png " + lines[0].split()[1] + " tiny-sdxl")  # path, seed used, base model
    assert lines[1].startswith("['0', '0.5', '1']") and lines[1].endswith(".png")
    strength, likeness, adherence = lines[2].split()  # the first cell's scores
    assert strength == "0.0" and -1 <= float(likeness) <= 1 and -1 <= float(adherence) <= 1
    assert lines[3].startswith(("Suggested: ", "Too close to call: "))  # the suggestion, in a sentence
    score = ast.literal_eval(lines[4])  # an image scored against the references and prompt
    assert set(score) == {"likeness", "adherence"}
    assert lines[5] == "['0 × 0', '0 × 0.5', '0 × 1', '1 × 0', '1 × 0.5', '1 × 1']"  # the 2-D sweep
    assert lines[6].startswith("face ") and lines[6].endswith("['face', 'style']")  # two people in a style
    assert os.path.exists(lines[0].split()[0])
