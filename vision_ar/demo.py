"""`vision-ar demo`: a local web page (Gradio) for in-painting, class-conditional editing and out-painting.

    pip install "vision-ar[demo]"
    vision-ar demo                      # http://127.0.0.1:7860, the shipped models
    vision-ar demo --port 8000 --models fmnist-gpt

Upload an image or pick a Fashion-MNIST test image, draw the region to generate with the brush (or choose a
preset mask), pick the model, mode, class, guidance (CFG) and seed, and run: the page shows the result and the
token grid that was kept from the input (green: kept, red: generated; one grid per scale for VAR).
Everything runs on this machine (nothing is downloaded; the server listens on 127.0.0.1 unless --host says
otherwise). The page's functions are also an API (`gradio_client`): `/load_test_image`, `/edit`.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch

from .errors import ConfigError, VisionARError

DISPLAY = 256                       # pixels of the drawing canvas and of the shown results
MASKS = ("drawn", "centre", "top half", "bottom half", "left half", "right half")
MODES = ("inpaint", "edit", "outpaint")
DIRECTIONS = ("right", "left", "top", "bottom")
UNCONDITIONAL = "(none: unconditional)"
INFER = "(infer from the kept pixels)"  # inpaint / outpaint: pipe.inpaint(..., "infer"), VAR and GPT


# ----------------------------------------------------------------------------------------------------
# The functions behind the page (plain Python, tested without a browser)
# ----------------------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def get_pipeline(name: str):
    from .pipelines import load_pipeline

    return load_pipeline(name)


def available_models() -> list[str]:
    """Shipped models (present in this installation) of the registered families that declare editing."""
    from .family import list_families
    from .pipelines import shipped_models

    present = set(shipped_models())
    return sorted(m for fam in list_families() if fam.edit_methods for m in fam.shipped if m in present)


def class_choices(name: str) -> list[str]:
    pipe = get_pipeline(name)
    names = pipe.class_names or [str(c) for c in range(pipe.num_classes)]
    try:
        pipe.check_class_inference()
        extra = [INFER]
    except VisionARError:  # e.g. a flow-matching generator: no token likelihoods to infer the class from
        extra = []
    return [UNCONDITIONAL] + extra + [f"{i}: {n}" for i, n in enumerate(names)]


def _class_id(choice: str | None) -> int | str | None:
    if not choice or choice == UNCONDITIONAL:
        return None
    if choice == INFER:
        from .pipelines.editing import INFER as infer_label

        return infer_label
    try:
        return int(str(choice).split(":")[0])
    except ValueError:
        raise ConfigError(f"unknown class {choice!r}") from None


def enlarge(image, size: int = DISPLAY):
    """Nearest-neighbour enlargement for display (32x32 pictures are unreadable at 1:1)."""
    from PIL import Image

    w, h = image.size
    k = max(1, size // max(w, h))
    return image.resize((w * k, h * k), Image.NEAREST)


def load_test_image(index: int):
    """Fashion-MNIST test image `index` (needs the dataset), enlarged for the drawing canvas."""
    from PIL import Image

    from .eval.fmnist_metrics import load_split_images

    images, labels = load_split_images("test")
    i = int(index)
    if not 0 <= i < len(images):
        raise ConfigError(f"test image index {i} is out of range 0..{len(images) - 1}")
    u8 = ((images[i].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return enlarge(Image.fromarray(u8))


def preset_mask(name: str, H: int, W: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    if name == "centre":
        m[H // 4: 3 * H // 4, W // 4: 3 * W // 4] = True
    elif name == "top half":
        m[: H // 2] = True
    elif name == "bottom half":
        m[H // 2:] = True
    elif name == "left half":
        m[:, : W // 2] = True
    elif name == "right half":
        m[:, W // 2:] = True
    else:
        raise ConfigError(f"unknown mask {name!r}; choose one of {MASKS}")
    return m


def read_editor(value, size: tuple[int, int]):
    """The drawing canvas' value -> (the image at the model's size (PIL RGB), the drawn mask (H, W) bool).

    The background is scaled to the model's size with a box filter (exact for the enlarged test images); a pixel of
    the model's image is to be generated when any brush stroke touches it."""
    from PIL import Image

    if not value or value.get("background") is None:
        raise ConfigError("no image: upload one or pick a test image first")
    H, W = size
    background = value["background"]
    if not isinstance(background, Image.Image):
        background = Image.open(background)
    image = background.convert("RGB").resize((W, H), Image.BOX)
    drawn = np.zeros((H, W), bool)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        layer = layer if isinstance(layer, Image.Image) else Image.open(layer)
        alpha = np.asarray(layer.convert("RGBA"))[..., 3] > 0
        if alpha.any():
            ys, xs = np.nonzero(alpha)  # scale each stroke pixel to the model grid (any touch counts)
            drawn[(ys * H) // alpha.shape[0], (xs * W) // alpha.shape[1]] = True
    return image, drawn


def token_grid_picture(known, width: int = DISPLAY):
    """Known-token maps (a (1, h, w) grid, or one per scale) -> a picture: green = kept, red = generated."""
    from PIL import Image

    maps = known if isinstance(known, list) else [known]
    size = max(24, width // len(maps))
    tiles = []
    for m in maps:
        m = m[0].cpu().numpy().astype(bool)
        rgb = np.where(m[..., None], np.array([40, 170, 70], np.uint8), np.array([200, 40, 40], np.uint8))
        tile = Image.fromarray(rgb).resize((size, size), Image.NEAREST)
        tiles.append(tile)
    out = Image.new("RGB", (len(tiles) * (size + 6) - 6, size), (255, 255, 255))
    for i, t in enumerate(tiles):
        out.paste(t, (i * (size + 6), 0))
    return out


def run_edit(model: str, editor, mask_choice: str, mode: str, class_choice: str | None, direction: str,
             amount: int, guidance_scale: float, seed: int):
    """One edit from the page's controls -> (result picture, kept-token picture, details)."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of {MODES}")
    pipe = get_pipeline(model)
    size = pipe.edit_image_size()
    image, drawn = read_editor(editor, size)
    label = _class_id(class_choice)
    inferring = class_choice == INFER  # the class comes from the kept pixels (inpaint / outpaint only)
    settings = dict(generator=torch.Generator().manual_seed(int(seed)), guidance_scale=float(guidance_scale))
    if mode == "outpaint":
        out = pipe.outpaint(image, direction, label, amount=int(amount), **settings)
    else:
        mask = drawn if mask_choice == "drawn" else preset_mask(mask_choice, *size)
        if not mask.any():
            raise ConfigError("the mask is empty: draw the region to generate, or choose a preset mask")
        if mode == "edit":
            if label is None or inferring:  # an edit needs the NEW class
                raise ConfigError("edit needs a class: choose the class the masked region becomes")
            out = pipe.edit(image, mask, label, **settings)
        else:
            out = pipe.inpaint(image, mask, label, **settings)
    details = {k: out.stats.get(k) for k in ("mode", "windows", "known_token_fraction", "notes", "canvas")
               if out.stats.get(k) is not None}
    details["seconds"] = round(out.stats.get("seconds", 0.0), 3)
    if inferring:
        details["inferred_class"] = out.labels[0]
    grid = token_grid_picture(out.known_tokens) if out.known_tokens is not None else None
    return enlarge(out.images[0]), grid, details


# ----------------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------------
def build_app(models: list[str] | None = None):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ModuleNotFoundError as e:
        raise ConfigError('the demo needs Gradio: pip install "vision-ar[demo]" (or pip install gradio)') from e

    models = models or available_models()
    if not models:
        raise ConfigError("no shipped model with editing is installed; the demo has nothing to run")
    unknown = [m for m in models if m not in available_models()]
    if unknown:
        raise ConfigError(f"models {unknown} are not shipped editing models; choose from {available_models()}")

    def guarded(fn):
        def call(*args):
            try:
                return fn(*args)
            except VisionARError as e:  # shown on the page as an error message, not a traceback
                raise gr.Error(str(e)) from None
        call.__name__ = fn.__name__
        return call

    with gr.Blocks(title="vision-ar editing", analytics_enabled=False) as app:
        gr.Markdown("## vision-ar: in-painting, class-conditional editing and out-painting\n"
                    "Draw the region to generate (white brush) or pick a preset mask; the token grid shows what "
                    "was kept from the input (green) and what was generated (red).")
        with gr.Row():
            with gr.Column():
                editor = gr.ImageEditor(label="image (draw the region to generate)", type="pil", image_mode="RGBA",
                                        brush=gr.Brush(colors=["#ffffff"], default_size=24, color_mode="fixed"),
                                        canvas_size=(DISPLAY, DISPLAY), layers=False, transforms=(),
                                        sources=("upload", "clipboard"), format="png", elem_id="editor")
                with gr.Row():
                    index = gr.Number(value=0, precision=0, label="Fashion-MNIST test image", elem_id="test-index")
                    pick = gr.Button("load test image", elem_id="load-test")
            with gr.Column():
                model = gr.Dropdown(models, value=models[0], label="model", elem_id="model")
                mode = gr.Radio(list(MODES), value="inpaint", label="mode", elem_id="mode")
                mask_choice = gr.Radio(list(MASKS), value="drawn", label="mask", elem_id="mask-choice")
                label = gr.Dropdown(class_choices(models[0]), value=UNCONDITIONAL, label="class", elem_id="class")
                with gr.Row():
                    direction = gr.Dropdown(list(DIRECTIONS), value="right", label="outpaint direction")
                    amount = gr.Number(value=16, precision=0, label="outpaint pixels")
                with gr.Row():
                    cfg = gr.Slider(0.0, 10.0, value=get_pipeline(models[0]).defaults.get("guidance_scale", 1.0),
                                    step=0.5, label="guidance (CFG)")
                    seed = gr.Number(value=0, precision=0, label="seed")
                run = gr.Button("run", variant="primary", elem_id="run")
            with gr.Column():
                result = gr.Image(label="result", type="pil", format="png", elem_id="result")
                kept = gr.Image(label="kept tokens (green) / generated (red)", type="pil", format="png",
                                elem_id="kept")
                details = gr.JSON(label="details")

        pick.click(guarded(load_test_image), inputs=index, outputs=editor, api_name="load_test_image")
        model.change(lambda m: gr.Dropdown(choices=class_choices(m), value=UNCONDITIONAL), inputs=model,
                     outputs=label, api_name=False)
        run.click(guarded(run_edit), inputs=[model, editor, mask_choice, mode, label, direction, amount, cfg, seed],
                  outputs=[result, kept, details], api_name="edit")
    return app


def launch(host: str = "127.0.0.1", port: int = 7860, models: list[str] | None = None, block: bool = True):
    """Serve the page; with block=False return (app, url) and keep serving in a background thread."""
    import gradio as gr

    app = build_app(models)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts: works offline
                              font_mono=["ui-monospace", "monospace"])
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, share=False,
                           quiet=True, theme=theme, ssr_mode=False, show_error=True)
    return app, url
