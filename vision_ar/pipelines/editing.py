"""In-painting, out-painting and class-conditional editing, shared by every pipeline.

    pipe = load_pipeline("fmnist-var")
    out = pipe.inpaint(image, mask, generator=torch.Generator().manual_seed(0))          # mask: white = generate
    out = pipe.outpaint(image, "right", amount=0.5, class_label=3)                         # or a canvas (H, W, top, left)
    out = pipe.edit(image, (8, 8, 24, 24), new_class_label=7, guidance_scale=4.0)         # the centre becomes class 7
    out.images, out.tokens, out.known_tokens, out.stats["notes"]

What happens (the same for every family):
  1. the image (PIL, path, uint8 array or float tensor in [-1, 1]) and the mask (see `masks.py`: white / True =
     generate) are read and checked; out-painting first puts the image on a larger canvas (the rest unknown);
  2. the canvas is worked on in windows of the model's image size (one window when the canvas is that size);
     the next window is always the one with the most known pixels, so each sees as much context as there is,
     and what a window generates is known to the windows after it;
  3. in a window the family maps the known pixels onto its tokens (THE RULE of `masks.py`), encodes the window
     and samples with those tokens forced (`sampling.forcing.KnownTokens`), then decodes;
  4. the output keeps the known pixels of the input exactly; `blend=k` instead fades from the input to the
     model's rendering over the k known pixels nearest to the generated region (to hide a seam).
A mask with nothing to generate returns the input; a mask with nothing known is plain generation; both say so in
`stats["notes"]` and with a `vision_ar.errors.EditNotice` warning.

A family declares what it supports in its record's `edit_methods` (a subset of EDIT_METHODS; `vision_ar/family.py`)
and gives its part in pipeline hooks: `edit_image_size()`, `sample_with_forcing(labels,
forcing, generator, **settings)` (its keyword arguments are the settings the edit methods accept), and where
needed `encode_for_edit` / `forcing_for_window` (tokens other than `tokenizer.encode(images)` in the layout
`tokenizer.token_layout` declares), `map_known` (another pixel -> token rule, with `edit_settings` naming its options),
`edit_defaults(method)` (per-method setting defaults), and for the shared `fresh_edit` strategy (plain samples of
the new class, the best fit to the kept region rendered: class edits of causal models) `forcing_sequence` /
`tokens_from_sequence` (sampled tokens <-> the forcing layout) and `token_vectors` (what is compared at the known
positions: code vectors, latents). A family on continuous latents (xAR) forces its known
entities the same way (`KnownTokens` with float values). A family whose tokens have no footprint (FlexTok)
overrides `edit_window` (editing in its decoder: the known pixels held during the decode) or declares no methods
(`check_edit_method` gives the error; override it to say why).
"""
from __future__ import annotations

import inspect
import numbers
import os
import time
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, EditNotice
from ..sampling.forcing import KnownTokens, repeat_rows
from .masks import generate_region, known_tokens, outpaint_canvas, read_image_file

EDIT_METHODS = ("inpaint", "outpaint", "edit")
INFER = "infer"  # class_label of inpaint / outpaint: the class the known pixels make most likely (_infer_labels)


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------
def image_batch(image) -> torch.Tensor:
    """A PIL image (or a list of them), an image file path, a uint8 array (H, W[, C]) / (B, H, W, C), or a float
    tensor (C, H, W) / (B, C, H, W) in [-1, 1] -> float32 (B, 3, H, W) in [-1, 1] (grey repeated to 3 channels)."""
    if isinstance(image, (str, os.PathLike)):
        image = read_image_file(image, "image")
    if hasattr(image, "convert") and hasattr(image, "size"):
        image = np.asarray(image.convert("RGB"))
    elif isinstance(image, (list, tuple)) and image and all(hasattr(i, "convert") for i in image):
        sizes = {i.size for i in image}
        if len(sizes) != 1:
            raise ConfigError(f"the images have different sizes {sorted(sizes)}; give images of one size")
        image = np.stack([np.asarray(i.convert("RGB")) for i in image])
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ConfigError(f"an image array must be uint8 (H, W, C) / (B, H, W, C), got {image.dtype}; pass float "
                              f"images as a torch tensor (B, 3, H, W) in [-1, 1]")
        x = torch.from_numpy(np.array(image, copy=True))
        if x.ndim == 2:
            x = x[..., None]
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
            raise ConfigError(f"an image array is (H, W), (H, W, C) or (B, H, W, C) with C = 1, 3 or 4, got "
                              f"{tuple(image.shape)}")
        x = x[..., :3].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    elif isinstance(image, torch.Tensor):
        if not image.is_floating_point():
            raise ConfigError(f"an image tensor must be float (B, 3, H, W) in [-1, 1], got {image.dtype}; convert uint8 "
                              f"with x.float() / 127.5 - 1")
        x = image.detach().float().cpu()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(f"an image tensor is (C, H, W) or (B, C, H, W) with C = 1 or 3, got {tuple(image.shape)}")
        if x.numel() and (x.min() < -1.001 or x.max() > 1.001):
            raise ConfigError(f"image values span [{x.min():.3g}, {x.max():.3g}]; tensors are in [-1, 1] (map [0, 1] "
                              f"images with x * 2 - 1)")
    else:
        raise ConfigError(f"cannot read a {type(image).__name__} as an image: give a PIL image, a file path, a uint8 "
                          f"array or a float tensor in [-1, 1]")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.clamp(-1, 1).contiguous()


def blend_weights(known: torch.Tensor, blend: int) -> torch.Tensor:
    """Weight of the input image per pixel (B, H, W): 0 where generated, 1 on known pixels more than `blend`
    pixels (chessboard distance) away from the generated region, rising linearly in between."""
    alpha = known.float()
    if blend <= 0:
        return alpha
    acc, eroded = alpha.clone(), alpha[:, None]
    for _ in range(blend):  # erosion = -maxpool(-x): pixels whose 3x3 neighbourhood is all known
        eroded = -F.max_pool2d(-eroded, 3, stride=1, padding=1)
        acc += eroded[:, 0]
    return torch.where(known, acc / (blend + 1), torch.zeros_like(acc))


def _window_positions(size: int, window: int) -> list[int]:
    """Window starts along one axis: every half window, the last one flush with the end."""
    if size == window:
        return [0]
    starts = list(range(0, size - window, max(1, window // 2)))
    return starts + [size - window]


def _next_window(done: torch.Tensor, positions: list[tuple[int, int]], Hm: int, Wm: int) -> tuple[int, int]:
    """The window (top, left) with something left to generate and the most known / generated pixels."""
    return max((rc for rc in positions if not bool(done[:, rc[0]:rc[0] + Hm, rc[1]:rc[1] + Wm].all())),
               key=lambda rc: int(done[:, rc[0]:rc[0] + Hm, rc[1]:rc[1] + Wm].sum()))


def _flat(x) -> torch.Tensor:
    """Tokens or known maps, (B, ...) or a per-scale list of them -> (B, L) in the generator's token order."""
    return torch.cat([t.flatten(1) for t in x], dim=1) if isinstance(x, list) else x.flatten(1)


# ----------------------------------------------------------------------------------------------------
# The shared API
# ----------------------------------------------------------------------------------------------------
class EditingMixin:
    """inpaint / outpaint / edit on a pipeline (module doc). Families fill in the hooks below."""

    edit_settings: tuple[str, ...] = ()   # family settings of the mask -> token mapping (passed to map_known)

    # ---- family hooks ------------------------------------------------------------------------------
    def supported_edit_methods(self) -> tuple[str, ...]:
        """The editing modes the pipeline's family declares (`Family.edit_methods`, vision_ar/families/)."""
        return tuple(self.family.edit_methods)

    def check_edit_method(self, method: str) -> None:
        """ConfigError unless this pipeline can run `method`: the family record says which modes it supports
        (a family may refuse more for some models, e.g. xAR entity types where a partly known entity is
        ill-defined, by overriding this)."""
        methods = self.supported_edit_methods()
        if method not in methods:
            why = f"it supports {', '.join(m + '()' for m in methods)}" if methods else \
                "the family declares no editing methods"
            raise ConfigError(f"family {self.family.name!r} ({type(self).__name__}) does not support {method}(): "
                              f"{why} (Family.edit_methods in its family module)")

    def edit_defaults(self, method: str) -> dict:
        """Per-method defaults of the family's settings (under what the caller passes)."""
        return {}

    def edit_image_size(self) -> tuple[int, int]:
        """(H, W) of the images the model generates: the window size."""
        raise NotImplementedError

    def edit_layout(self):
        """The tokenizer's TokenLayout for one window (what `map_known` maps the pixel mask onto)."""
        return self.tokenizer.token_layout(self.edit_image_size())

    def map_known(self, known: torch.Tensor, any_part: bool, method: str, **edit_settings):
        """Known pixels (B, H, W) of a window -> known tokens in the family's layout (masks.known_tokens)."""
        return known_tokens(known, self.edit_layout(), any_part=any_part)

    def encode_for_edit(self, images: torch.Tensor):
        """Window images (B, 3, H, W) in [-1, 1] -> the tokens that forcing keeps, in the family's layout."""
        return self.tokenizer.encode(images)

    def forcing_for_window(self, maps, tokens) -> KnownTokens:
        """Known maps (as `masks.known_tokens` gives them) + encoded tokens -> the sampler's forcing input."""
        if isinstance(maps, list):  # pyramid: one flat map per scale
            B = maps[0].shape[0]
            return KnownTokens([m.reshape(B, -1) for m in maps], [t.reshape(B, -1) for t in tokens])
        return KnownTokens(maps.reshape(maps.shape[0], -1), tokens.reshape(tokens.shape[0], -1))

    def sample_with_forcing(self, labels: list[int | None], forcing: KnownTokens | None,
                            generator: torch.Generator | None, **settings):
        """Sample with the known tokens kept -> (tokens, images (B, 3, H, W) in [0, 1]). None labels: unconditional."""
        raise NotImplementedError

    # ---- edit_strategy="fresh": plain samples of the new class, the one that fits the kept region best ----
    # A family opts in with the two hooks below (GPT: codes in raster order; xAR: latents in entity order).
    def forcing_sequence(self, tokens) -> torch.Tensor:
        """Sampled tokens, as `sample_with_forcing` returns them -> the layout of `KnownTokens.values` (B, N[, C]).
        A family without it is refused by `fresh_edit` before any sampling."""
        raise NotImplementedError

    def token_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, N) codes or (B, N, C) latents in the forcing layout -> (B, N, C) vectors to compare at known positions."""
        return seq

    def tokens_from_sequence(self, seq: torch.Tensor):
        """Inverse of `forcing_sequence`."""
        return seq

    def fresh_edit(self, labels: list[int | None], forcing: KnownTokens, generator: torch.Generator | None,
                   candidates: int, **settings):
        """K plain samples of each row's class, blind to the input (one batched call: row b's K samples are
        rows b*K .. b*K+K-1); the one whose token vectors at the known positions lie closest (squared L2) to
        the input's is kept -> (its tokens with the input's put back at the known positions, the image rendered
        from the sample itself). `_composite` then puts the input's known pixels back.

        Why (class edits): a causal model draws the kept ring of a centre edit BEFORE most of the region and it
        carries the OLD silhouette, so forced sampling redraws the old class; a fresh sample follows the new
        label, and the choice among K makes its border agree with what is kept. The image is decoded from the
        sample, not from the token composite: the decoder would spread the ring's old codes into the region
        (Fashion-MNIST GPT centre edits, N = 500, CFG 1.5: 40.6% new class from the composite, 74.8% from the
        sample; the oracle pasting a real image of the new class: 75.6%; docs/editing.md)."""
        if isinstance(candidates, bool) or int(candidates) != candidates or candidates < 1:
            raise ConfigError(f"edit_candidates={candidates} must be an integer >= 1")
        K, B = int(candidates), len(labels)
        if type(self).forcing_sequence is EditingMixin.forcing_sequence or not isinstance(forcing.known, torch.Tensor):
            raise ConfigError(f"edit_strategy='fresh' compares one token sequence per image, and "
                              f"{type(self).__name__} does not give one (forcing_sequence); use its own strategies")
        known, values = forcing.flat((B, forcing.known[0].numel()))
        target = self.token_vectors(values)  # before any sampling: a family without vectors says so first
        rows = [c for c in labels for _ in range(K)]  # labels may hold None: repeat_rows is for tensors
        sampled, images01 = self.sample_with_forcing(rows, None, generator, **settings)
        seq = self.forcing_sequence(sampled)
        N = seq.shape[1]
        known, values, target = known.to(seq.device), values.to(seq.device), target.to(seq.device)
        gap = ((self.token_vectors(seq) - repeat_rows(target, K)) ** 2).sum(-1)
        score = -(gap * repeat_rows(known, K)).sum(1).view(B, K)
        chosen = torch.arange(B, device=seq.device) * K + score.argmax(dim=1)
        mask = known.view(B, N, *([1] * (seq.ndim - 2)))
        tokens = self.tokens_from_sequence(torch.where(mask, values, seq[chosen]))
        return tokens, images01[chosen.to(images01.device)]

    def check_class_inference(self):
        """The family's training task if the generator can score tokens per class (what class_label="infer"
        needs: teacher-forced `logits(model, tokens, labels)`, train/generator_tasks.py), else ConfigError."""
        task = self.family.generator_task(self.generator, self.tokenizer)
        if not callable(getattr(task, "logits", None)):
            raise ConfigError(f"class_label={INFER!r} needs token likelihoods per class, and family "
                              f"{self.family.name!r} ({type(task).__name__}) has none (a flow-matching generator "
                              f"gives no exact likelihood); give the class, or None for unconditional")
        return task

    @torch.inference_mode()
    def class_log_likelihoods(self, tokens, known_maps) -> torch.Tensor:
        """log p(known tokens | class) for every class, (B, num_classes): the generator teacher-forced on `tokens`
        (a window's full token set, in the layout `sample_with_forcing` returns) with each class in turn, summed
        over the positions `known_maps` marks. The unknown tokens are only context here."""
        task = self.check_class_inference()
        device = next(self.generator.parameters()).device
        tokens, known = _flat(tokens).to(device=device, dtype=torch.long), _flat(known_maps).to(device)
        rows = []
        for c in range(self.num_classes):  # one class at a time: B x L x V logits, not C times that
            labels = torch.full((tokens.shape[0],), c, dtype=torch.long, device=device)
            logp = task.logits(self.generator, tokens, labels).float().log_softmax(-1)
            logp = logp.gather(2, tokens[..., None])[..., 0]
            rows.append(torch.where(known, logp, torch.zeros_like(logp)).sum(1))
        return torch.stack(rows, dim=1).cpu()

    def _infer_labels(self, images, known, labels, infer_rows, generator, any_part, method, settings,
                      edit_settings):
        """class_label="infer": the class c maximising p(known tokens | c) (a uniform prior over classes).

        The known tokens' likelihood needs the unknown ones as context (GPT: those before them in raster order;
        VAR: the coarse scales), so the window with the most known pixels is first filled unconditionally, as
        inpaint(None) would, then teacher-forced once per class (`class_log_likelihoods`); the caller then fills
        the image again, conditioned on the class found. Returns the labels and the scores of the inferred rows."""
        # nothing known: no evidence, the row stays unconditional; all known: nothing is generated anyway
        rows = [b for b, r in enumerate(infer_rows) if r and bool(known[b].any()) and not bool(known[b].all())]
        if not rows:
            return labels, torch.zeros(0, self.num_classes)
        (Hm, Wm), (_, _, H, W) = self.edit_image_size(), images.shape
        positions = [(r, c) for r in _window_positions(H, Hm) for c in _window_positions(W, Wm)]
        r, c = _next_window(known[rows], positions, Hm, Wm)
        win_images, win_known = images[rows, :, r:r + Hm, c:c + Wm], known[rows, r:r + Hm, c:c + Wm]
        _, tokens, maps = self.edit_window(win_images, win_known, [None] * len(rows), generator, any_part, method,
                                           settings, edit_settings)
        scores = self.class_log_likelihoods(tokens, maps)
        best = dict(zip(rows, scores.argmax(dim=1).tolist()))
        return [best.get(b, labels[b]) for b in range(len(labels))], scores

    def edit_window(self, images: torch.Tensor, known: torch.Tensor, labels: list[int | None],
                    generator: torch.Generator | None, any_part: bool, method: str, settings: dict,
                    edit_settings: dict):
        """One window: images (B, 3, H, W) in [-1, 1], known pixels (B, H, W) -> (images in [0, 1], tokens,
        known-token maps). Rows without a known pixel are sampled freely (no token is forced there)."""
        maps = self.map_known(known, any_part, method, **edit_settings)
        free = ~known.flatten(1).any(dim=1)  # rows with nothing known: plain generation
        if free.any():
            clear = lambda m: m & ~free.view(-1, *([1] * (m.ndim - 1))).to(m.device)
            maps = [clear(m) for m in maps] if isinstance(maps, list) else clear(maps)
        flat = _flat(maps)
        forcing = None
        if bool(flat.any()):
            forcing = self.forcing_for_window(maps, self.encode_for_edit(images))
        tokens, images01 = self.sample_with_forcing(labels, forcing, generator, **settings)
        return images01, tokens, maps

    # ---- public methods ----------------------------------------------------------------------------
    def inpaint(self, image, mask, class_label: int | Sequence[int] | None = None, *,
                generator: torch.Generator | None = None, any_part: bool = False, blend: int = 0,
                output_type: str = "pil", **settings):
        """Regenerate the masked region (white / True = generate) of `image`, keeping the rest.

        class_label: the class to generate (an int, or one per image); None = unconditional (the model's null
        class), which restores what fits the rest of the image; "infer" = the class the known pixels make most
        likely under the generator (one unconditional fill, scored per class, then a conditional fill: about twice
        the time; families with token likelihoods, VAR and GPT; the scores are in stats["class_log_likelihoods"]).
        settings: the pipeline's sampling settings (guidance_scale, top_k, top_p, temperature, ...). any_part: keep
        a token when any part of its footprint is known (default: only when all of it is). Returns the pipeline's output object (`__call__`'s).
        """
        images = image_batch(image)
        generate = generate_region(mask, tuple(images.shape[2:]), images.shape[0])
        return self._edit("inpaint", images, ~generate, class_label, generator, any_part, blend, output_type,
                          settings)

    def edit(self, image, mask, new_class_label: int | Sequence[int], *, generator: torch.Generator | None = None,
             any_part: bool = False, blend: int = 0, output_type: str = "pil", **settings):
        """Class-conditional editing: regenerate the masked region as `new_class_label`, keeping the rest."""
        if new_class_label is None:
            raise ConfigError("edit() needs new_class_label, the class the masked region becomes; use inpaint() to "
                              "fill a region without a class")
        images = image_batch(image)
        generate = generate_region(mask, tuple(images.shape[2:]), images.shape[0])
        return self._edit("edit", images, ~generate, new_class_label, generator, any_part, blend, output_type,
                          settings)

    def outpaint(self, image, canvas_or_direction, class_label: int | Sequence[int] | None = None, *,
                 amount: float | int = 0.5, generator: torch.Generator | None = None, any_part: bool = False,
                 blend: int = 0, output_type: str = "pil", **settings):
        """Extend `image` onto a larger canvas and generate what is around it.

        canvas_or_direction: "left" | "right" | "top" | "bottom" (or several joined by "+"), growing the canvas by
        `amount` on that side (int: pixels; float: fraction of the image side), or a canvas (height, width) with
        the image centred, or (height, width, top, left). The canvas must be at least the model's image size.
        The unknown part of the canvas starts as the image's mean colour (what the encoder sees there).
        class_label: as inpaint's (an int, one per image, None or "infer").
        """
        images = image_batch(image)
        B, _, h, w = images.shape
        canvas = outpaint_canvas((h, w), canvas_or_direction, amount)
        mean = images.mean(dim=(2, 3), keepdim=True)
        board = mean.expand(B, 3, canvas.height, canvas.width).clone()
        board[:, :, canvas.top: canvas.top + h, canvas.left: canvas.left + w] = images
        known = torch.zeros(B, canvas.height, canvas.width, dtype=torch.bool)
        known[:, canvas.top: canvas.top + h, canvas.left: canvas.left + w] = True
        out = self._edit("outpaint", board, known, class_label, generator, any_part, blend, output_type, settings)
        out.stats["canvas"] = {"height": canvas.height, "width": canvas.width, "top": canvas.top,
                               "left": canvas.left}
        return out

    # ---- the common path ---------------------------------------------------------------------------
    def _check_edit_call(self, method: str, labels, batch: int, settings: dict):
        self.check_edit_method(method)
        sampling = set(inspect.signature(self.sample_with_forcing).parameters) - {"labels", "forcing", "generator"}
        unknown = sorted(set(settings) - sampling - set(self.edit_settings))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown} for {type(self).__name__}.{method}(); it takes "
                              f"{sorted(sampling | set(self.edit_settings))}")
        if labels is None or isinstance(labels, (numbers.Integral, str)):
            labels = [labels] * batch
        elif torch.is_tensor(labels):
            labels = labels.tolist()
        if len(labels) != batch:
            raise ConfigError(f"{len(labels)} class labels for {batch} images; give one label, or one per image")
        words = sorted({l for l in labels if isinstance(l, str)} - {INFER})
        if words:
            raise ConfigError(f"class label(s) {words} are not classes: give an int, None (unconditional) or "
                              f"{INFER!r} (the class the known pixels make most likely under the model)")
        infer_rows = [isinstance(l, str) for l in labels]
        if any(infer_rows) and method == "edit":
            raise ConfigError(f"edit() makes the region a NEW class, so {INFER!r} (the class the image already "
                              f"has) does not apply; give new_class_label, or use inpaint(..., {INFER!r})")
        if any(infer_rows):
            self.check_class_inference()
        labels = [None if r else l for l, r in zip(labels, infer_rows)]
        # the pipeline's one check of labels and guidance (None = unconditional); guidance resolved here so
        # the family's sampler gets a checked value
        guidance = self.setting(settings.get("guidance_scale"), "guidance_scale")
        labels, settings["guidance_scale"] = self.check_request(labels, guidance, unconditional=True)
        edit_settings = {k: settings.pop(k) for k in list(settings) if k in self.edit_settings}
        return labels, infer_rows, edit_settings

    def _edit(self, method: str, images: torch.Tensor, known: torch.Tensor, class_label, generator, any_part: bool,
              blend: int, output_type: str, settings: dict):
        from .base import PipelineOutput, to_output_type

        B, _, H, W = images.shape
        settings = {**self.edit_defaults(method), **settings}
        labels, infer_rows, edit_settings = self._check_edit_call(method, class_label, B, settings)
        if int(blend) != blend or blend < 0:
            raise ConfigError(f"blend={blend!r} must be an integer >= 0 (pixels of the known region to fade over)")
        Hm, Wm = self.edit_image_size()
        if H < Hm or W < Wm:
            what = "the out-painting canvas" if method == "outpaint" else "the image"
            raise ConfigError(f"{what} is {H}x{W}, smaller than the {Hm}x{Wm} images this model makes; resize it to "
                              f"at least {Hm}x{Wm}" + ("" if method == "outpaint" else " (or outpaint it onto a "
                                                       f"{Hm}x{Wm} canvas)"))
        notes: list[str] = []
        t0 = time.perf_counter()
        if bool(known.all()):
            self._notice(notes, f"{method}: the mask leaves nothing to generate; the input is returned unchanged")
            return PipelineOutput(images=to_output_type((images + 1) / 2, output_type), tokens=None, labels=labels,
                                  stats={"notes": notes, "windows": 0, "seconds": 0.0}, known_tokens=None)
        if not bool(known.any()):
            self._notice(notes, f"{method}: nothing of the image is known; this is plain generation")
        notes += [f"image {b}: nothing to generate, kept as it is" for b in range(B) if B > 1 and bool(known[b].all())]

        scores = None
        if any(infer_rows):
            labels, scores = self._infer_labels(images, known, labels, infer_rows, generator, any_part, method,
                                                settings, edit_settings)
            notes.append(f"{method}: class inferred from the known pixels: "
                         f"{[labels[b] for b in range(B) if infer_rows[b]]} (None: nothing known to infer from)")
        run = self._generate_in_windows(images, known, labels, generator, any_part, method, settings, edit_settings)
        result = self._composite(images, known, run, int(blend))
        maps = run["token_maps"]
        flat = _flat(maps)
        stats = {"notes": notes, "windows": len(run["windows"]), "window_positions": run["windows"], "mode": method,
                 "seconds": time.perf_counter() - t0, "known_pixel_fraction": float(known.float().mean()),
                 "known_token_fraction": float(flat.float().mean())}  # of the last window
        if scores is not None:  # (rows inferred, num_classes): log p(known tokens | class), see _infer_labels
            stats["class_log_likelihoods"] = scores
        return PipelineOutput(images=to_output_type((result + 1) / 2, output_type), tokens=run["tokens"],
                              labels=labels, stats=stats, known_tokens=maps)

    def _generate_in_windows(self, images, known, labels, generator, any_part, method, settings, edit_settings):
        """Fill every unknown pixel, one model-sized window at a time (the one with the most context first).

        Returns canvas (known + generated pixels), rendered (the model's output for every pixel a window
        covered, first window wins), covered, the window positions, and the last window's tokens and maps."""
        (B, _, H, W), (Hm, Wm) = images.shape, self.edit_image_size()
        canvas, done = images.clone(), known.clone()  # `done`: known or already generated
        rendered, covered = torch.zeros_like(images), torch.zeros_like(known)
        positions = [(r, c) for r in _window_positions(H, Hm) for c in _window_positions(W, Wm)]
        windows, tokens, token_maps = [], None, None
        while not bool(done.all()):
            r, c = _next_window(done, positions, Hm, Wm)
            win = (slice(None), slice(None), slice(r, r + Hm), slice(c, c + Wm))
            win_known = done[win[0], win[2], win[3]]
            out01, tokens, token_maps = self.edit_window(canvas[win], win_known, labels, generator, any_part,
                                                         method, settings, edit_settings)
            out = out01.float().cpu().mul(2).sub(1)
            canvas[win] = torch.where(win_known[:, None], canvas[win], out)
            rendered[win] = torch.where(covered[win[0], win[2], win[3]][:, None], rendered[win], out)
            covered[win[0], win[2], win[3]] = True
            done[win[0], win[2], win[3]] = True
            windows.append((r, c))
        return {"canvas": canvas, "rendered": rendered, "covered": covered, "windows": windows, "tokens": tokens,
                "token_maps": token_maps}

    @staticmethod
    def _composite(images, known, run: dict, blend: int) -> torch.Tensor:
        """Known pixels from the input (exactly, or faded over `blend` pixels at the border), the rest generated."""
        covered = run["covered"]
        alpha = blend_weights(known, blend)
        alpha = torch.where(covered, alpha, torch.ones_like(alpha))  # never rendered: the input stays
        model = torch.where(covered[:, None], run["rendered"], run["canvas"])
        result = alpha[:, None] * images + (1 - alpha[:, None]) * model
        return torch.where(known[:, None] & (alpha[:, None] == 1), images, result)  # exact, not float-mixed

    @staticmethod
    def _notice(notes: list[str], message: str) -> None:
        notes.append(message)
        warnings.warn(message, EditNotice, stacklevel=4)
