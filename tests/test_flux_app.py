"""The app on the FLUX family (`tiny-flux`): the General tab draws through the API; the tabs FLUX has no adapter
for are not built and their endpoints answer in one line."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file

from pipelines import Engine
from pipelines.metadata import read_png_metadata


@pytest.fixture(scope="module")
def client(families, tiny_root, tmp_path_factory):
    import app

    demo = app.create_app(Engine(families["tiny-flux"], tiny_root=tiny_root))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **app.launch_options())
    yield Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("flux-dl")))
    demo.close()


def test_the_general_tab_draws_on_flux(client, reference_files):
    reference = [{"image": handle_file(reference_files["gold"])}]
    path, seed, _, meta, seen = client.predict(prompt="a vase", reference=reference, strength=0.8, seed=3,
                                               api_name="/general")  # fmt: skip
    stored = read_png_metadata(path)
    assert stored["model_family"] == "tiny-flux" and stored["adapter"] == "tiny-flux-ip-adapter/ip_adapter.safetensors"
    assert stored["image_prompts"][0]["layer_ramp"] == [0.3, 0.92] and meta["diagnostics"]["denoiser_calls"] == 4
    assert seed == 3 and len(seen) == 1  # what CLIP ViT-L sees of the reference
    cells, *_ = client.predict(prompt="a vase", reference=reference, strengths="0, 1", api_name="/general_compare")
    assert [c["caption"] for c in cells] == ["0", "1"]


@pytest.mark.parametrize(("endpoint", "title"), [("/face", "Consistent face"), ("/style_compare", "Style"),
                                                 ("/anime", "Anime character")])  # fmt: skip
def test_tabs_without_a_flux_adapter_answer_in_one_line(client, endpoint, title):
    with pytest.raises(Exception, match=rf"The {title} tab is not available with the tiny-flux family \(FLUX\): it "
                                        r"offers General\. Start the app with another family"):  # fmt: skip
        client.predict(prompt="x", api_name=endpoint)
