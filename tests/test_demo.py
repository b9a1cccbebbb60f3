"""`vision-ar demo`: the page's functions through Gradio's own client, and the page in a real headless browser.

The browser test drives Debian's chromium (/usr/bin/chromium, `apt-get install -y chromium`) with Playwright's
Python package pointed at it (nothing is downloaded); it skips, saying so, where either is missing."""
import os
import shutil
import socket
import tempfile

import numpy as np
import pytest

gradio = pytest.importorskip("gradio", reason="the demo needs the `demo` extra: pip install gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from vision_ar.demo import build_app, launch, read_editor, token_grid_picture  # noqa: E402
from vision_ar.errors import ConfigError  # noqa: E402

CHROMIUM = os.environ.get("VISION_AR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    app, url = launch(port=_free_port(), block=False)
    assert url.startswith("http://127.0.0.1:")
    yield url
    app.close()


@pytest.fixture
def uploaded(tmp_path):
    """A 32x32 garment-like picture and a brush layer covering its top half, as files the client uploads."""
    img = np.zeros((32, 32, 3), np.uint8)
    img[4:28, 8:24] = 170
    Image.fromarray(img).resize((256, 256), Image.NEAREST).save(tmp_path / "bg.png")
    layer = np.zeros((256, 256, 4), np.uint8)
    layer[:128, :, :] = 255
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    return img, tmp_path


def _editor(background, layers=()):
    return {"background": handle_file(str(background)), "layers": [handle_file(str(p)) for p in layers],
            "composite": None, "id": None}


def test_client_edits_a_drawn_mask(server, uploaded):
    img, folder = uploaded
    client = Client(server, verbose=False)
    result, kept, details = client.predict("fmnist-var", _editor(folder / "bg.png", [folder / "layer.png"]), "drawn",
                                           "inpaint", "(none: unconditional)", "right", 16, 4.0, 0, api_name="/edit")
    out = np.asarray(Image.open(result).convert("RGB").resize((32, 32), Image.BOX))
    assert np.array_equal(out[16:], img[16:])  # the undrawn bottom half is the input's
    assert details["mode"] == "inpaint" and 0 < details["known_token_fraction"] < 1
    assert Image.open(kept).size[0] > 0


def test_client_test_image_and_every_mode(server):
    pytest.importorskip("vision_ar.data.fashion_mnist")
    client = Client(server, verbose=False)
    editor = client.predict(5, api_name="/load_test_image")
    value = _editor(editor["background"])
    for model, mode, mask, label in (("fmnist-gpt", "edit", "centre", "7: Sneaker"),
                                     ("fmnist-var", "outpaint", "drawn", "(none: unconditional)")):
        result, kept, details = client.predict(model, value, mask, mode, label, "right", 16, 3.0, 1, api_name="/edit")
        assert details["mode"] == mode and os.path.isfile(result)
        if mode == "outpaint":
            assert details["canvas"]["width"] == 48 and Image.open(result).size[0] == 1.5 * Image.open(result).size[1]
    result, kept, details = client.predict("fmnist-var", value, "bottom half", "inpaint",
                                           "(infer from the kept pixels)", "right", 16, 3.0, 0, api_name="/edit")
    assert details["inferred_class"] in range(10) and any("class inferred" in n for n in details["notes"])
    with pytest.raises(AppError, match="the mask is empty"):
        client.predict("fmnist-gpt", value, "drawn", "inpaint", "(none: unconditional)", "right", 16, 3.0, 0,
                       api_name="/edit")
    with pytest.raises(AppError, match="edit needs a class"):
        client.predict("fmnist-gpt", value, "centre", "edit", "(none: unconditional)", "right", 16, 3.0, 0,
                       api_name="/edit")


def test_class_choices_offer_inference_where_the_family_has_likelihoods():
    from vision_ar.demo import INFER, class_choices

    assert INFER in class_choices("fmnist-var") and INFER in class_choices("fmnist-gpt")
    assert INFER not in class_choices("fmnist-xar")  # flow matching: no token likelihoods


def test_page_functions_refuse_bad_input():
    with pytest.raises(ConfigError, match="no image"):
        read_editor({"background": None, "layers": []}, (32, 32))
    with pytest.raises(ConfigError, match="not shipped editing models"):
        build_app(["no-such-model"])
    import torch

    picture = token_grid_picture([torch.ones(1, 1, 1, dtype=torch.bool), torch.zeros(1, 2, 2, dtype=torch.bool)])
    green, red = picture.getpixel((2, 2)), picture.getpixel((picture.width - 2, 2))
    assert green[1] > green[0] and red[0] > red[1]


def test_page_in_a_headless_browser(server):
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install -y chromium (or set VISION_AR_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the browser is Debian's)")
    profile = tempfile.mkdtemp(prefix="vision-ar-chromium-")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                           args=CHROMIUM_FLAGS)  # a fresh profile folder
            try:
                page = browser.new_page()
                page.goto(server, timeout=120_000)
                page.wait_for_selector("#run", timeout=120_000)
                page.click("#load-test")
                page.wait_for_selector("#editor canvas", timeout=60_000)
                page.wait_for_timeout(1000)
                page.get_by_label("centre").check()
                page.get_by_label("edit", exact=True).check()
                page.locator("#class input").click()
                page.locator("ul li", has_text="8: Bag").click()
                assert page.locator("#class input").input_value() == "8: Bag"
                page.click("#run")
                page.wait_for_selector("#result img", timeout=120_000)
                assert "/file=" in page.get_attribute("#result img", "src")
                page.wait_for_selector("#kept img", timeout=60_000)
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
