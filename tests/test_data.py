"""Data layer: Fashion-MNIST from the Debian files, class folders with the ADM crop, token caches, sampler."""
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vision_ar.data import (CachedTokens, FashionMNIST, ImageFolder, ResumableSampler, cache_tokenizer_outputs,
                            center_crop_arr, content_key)
from vision_ar.data.fashion_mnist import DEBIAN_ROOT, ROOT_ENV_VAR, SPLIT_FILES
from vision_ar.errors import ConfigError, DataError, MissingFileError

HAVE_FMNIST = all((DEBIAN_ROOT / f).is_file() for split in SPLIT_FILES.values() for f in split[:2])
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install -y dataset-fashion-mnist")


# ----------------------------------------------------------------------------------------------------
# Fashion-MNIST
# ----------------------------------------------------------------------------------------------------
@needs_fmnist
def test_fashion_mnist_layout():
    ds = FashionMNIST("test")
    assert len(ds) == 10000 and len(FashionMNIST.classes) == 10
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert -1.0 <= x.min() and x.max() <= 1.0 and x.max() > 0  # scaled to [-1, 1], not blank
    # the 2-pixel border is background (-1) and the three channels are the same grey image
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[:, border] == -1.0).all()
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    # labels cover 0..9 (the test split is balanced: 1000 each)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    # the pixels are the IDX bytes: check one against a direct read
    raw = np.frombuffer(gzip.open(DEBIAN_ROOT / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    assert torch.equal(((x[0, 2:30, 2:30] + 1) * 127.5).round().to(torch.uint8),
                       torch.from_numpy(raw[:784].reshape(28, 28).copy()))


@needs_fmnist
def test_fashion_mnist_flip_and_limit():
    torch.manual_seed(0)
    plain, flipped = FashionMNIST("test", limit=64), FashionMNIST("test", limit=64, flip=True)
    assert len(plain) == 64
    pairs = [(plain[i][0], flipped[i][0]) for i in range(64)]  # each flipped sample drawn once
    n_flipped = sum(not torch.equal(a, b) for a, b in pairs)
    assert 10 < n_flipped < 54
    assert all(torch.equal(a.flip(-1), b) or torch.equal(a, b) for a, b in pairs)


def _copy_split(tmp_path: Path, split: str = "test") -> Path:
    for name in SPLIT_FILES[split][:2]:
        shutil.copy(DEBIAN_ROOT / name, tmp_path / name)
    return tmp_path


@needs_fmnist
def test_fashion_mnist_missing_file(tmp_path, monkeypatch):
    root = _copy_split(tmp_path)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MissingFileError, match="t10k-labels-idx1-ubyte.gz.*apt-get install -y dataset-fashion-mnist"):
        FashionMNIST("test", root=root)
    monkeypatch.setenv(ROOT_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(MissingFileError, match="nowhere"):
        FashionMNIST("test")
    with pytest.raises(ConfigError, match="split"):
        FashionMNIST("validation")


@needs_fmnist
def test_fashion_mnist_env_root_and_corrupt_files(tmp_path, monkeypatch):
    root = _copy_split(tmp_path)
    monkeypatch.setenv(ROOT_ENV_VAR, str(root))
    assert len(FashionMNIST("test", limit=5)) == 5  # read from the env folder
    labels = root / "t10k-labels-idx1-ubyte.gz"  # the small file: quick to rewrite
    raw = gzip.open(labels).read()
    # truncated data (valid gzip, header promises more)
    labels.write_bytes(gzip.compress(raw[: len(raw) // 2], compresslevel=1))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz.*truncated"):
        FashionMNIST("test")
    # wrong magic number (an images header where labels belong)
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + raw[4:], compresslevel=1))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz.*magic"):
        FashionMNIST("test")
    # a cut-off gzip stream
    labels.write_bytes(gzip.compress(raw, compresslevel=1)[:3000])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz.*corrupt or truncated"):
        FashionMNIST("test")
    # not gzip at all
    labels.write_bytes(b"hello")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        FashionMNIST("test")


# ----------------------------------------------------------------------------------------------------
# Image folder + ADM centre crop
# ----------------------------------------------------------------------------------------------------
def _make_folder(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> Path:
    rng = np.random.default_rng(0)
    for cls, whs in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(whs):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def _reference_crop(img: Image.Image, size: int) -> np.ndarray:
    # The ADM recipe written out step by step for the test.
    while min(img.size) >= 2 * size:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.BOX)
    s = size / min(img.size)
    img = img.resize((round(img.size[0] * s), round(img.size[1] * s)), resample=Image.BICUBIC)
    a = np.array(img)
    t, l = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[t:t + size, l:l + size]


def test_image_folder_adm_crop(tmp_path):
    root = _make_folder(tmp_path / "imgs", {"zebra": [(333, 517), (40, 29)], "ant": [(1031, 600)]})
    ds = ImageFolder(root, image_size=32)
    assert ds.classes == ["ant", "zebra"] and len(ds) == 3  # sorted class names -> labels
    for i, (path, label) in enumerate(ds.samples):
        x, y = ds[i]
        assert y == label and x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert -1.0 <= x.min() and x.max() <= 1.0
        ref = _reference_crop(Image.open(path).convert("RGB"), 32)
        assert torch.equal(((x + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(ref).permute(2, 0, 1))
    img = Image.open(ds.samples[0][0])  # 1031x600 -> halved twice -> 257x150 -> bicubic -> crop
    assert center_crop_arr(img, 32).size == (32, 32)
    torch.manual_seed(0)
    flipped = ImageFolder(root, image_size=32, flip=True)
    outs = [flipped[0][0] for _ in range(20)]
    assert any(torch.equal(o, ds[0][0].flip(-1)) for o in outs) and any(torch.equal(o, ds[0][0]) for o in outs)


def test_image_folder_errors(tmp_path):
    with pytest.raises(MissingFileError):
        ImageFolder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class subfolders"):
        ImageFolder(tmp_path / "empty")
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(ConfigError, match="cat"):
        ImageFolder(tmp_path / "empty")
    root = _make_folder(tmp_path / "bad", {"a": [(40, 40)]})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    ds = ImageFolder(root, image_size=16)
    bad = [i for i, (p, _) in enumerate(ds.samples) if p.name == "broken.png"][0]
    with pytest.raises(DataError, match="broken.png"):
        ds[bad]


# ----------------------------------------------------------------------------------------------------
# Token cache
# ----------------------------------------------------------------------------------------------------
class _GridTok(nn.Module):
    """A stand-in tokenizer: 4x4 grid of codes from pooled pixels (deterministic)."""

    def __init__(self, vocab=512):
        super().__init__()
        self.proj = nn.Parameter(torch.linspace(0.5, 1.5, 3))
        self.vocab = vocab

    def codes(self, x, side):
        g = torch.einsum("bchw,c->bhw", nn.functional.adaptive_avg_pool2d(x, side), self.proj)
        return ((g + 5) * 50).long().clamp(0, self.vocab - 1)

    def encode(self, x):
        return self.codes(x, 4)

    def encode_scales(self, x):  # VAR-like: a list of per-scale grids
        return [self.codes(x, s) for s in (1, 2, 4)]


class _Images(torch.utils.data.Dataset):
    def __init__(self, n=10, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1, torch.arange(n) % 3
        self.cache_id = f"images:{seed}:{n}"

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_cache_round_trip_tensor_and_list(tmp_path):
    tok, data = _GridTok(), _Images()
    path = cache_tokenizer_outputs(tok.encode, data, tmp_path / "c.safetensors", batch_size=4)
    cached = CachedTokens(path, expected_key=content_key(tok.encode, data))
    assert len(cached) == 10
    for i in range(10):
        t, y = cached[i]
        assert t.dtype == torch.int64 and torch.equal(t, tok.encode(data[i][0][None])[0]) and y == data[i][1]
    batch = next(iter(torch.utils.data.DataLoader(cached, batch_size=5)))
    assert batch[0].shape == (5, 4, 4)

    lpath = cache_tokenizer_outputs(tok.encode_scales, data, tmp_path / "l.safetensors", batch_size=3)
    lc = CachedTokens(lpath)
    parts, y = lc[7]
    ref = tok.encode_scales(data[7][0][None])
    assert [p.shape for p in parts] == [(1, 1), (2, 2), (4, 4)]
    assert all(torch.equal(p, r[0]) for p, r in zip(parts, ref))
    tokens, labels = next(iter(torch.utils.data.DataLoader(lc, batch_size=4)))  # default collate: list of B,...
    assert [t.shape for t in tokens] == [(4, 1, 1), (4, 2, 2), (4, 4, 4)]


def test_cache_detects_stale(tmp_path, capsys):
    tok, data = _GridTok(), _Images()
    path = tmp_path / "c.safetensors"
    cache_tokenizer_outputs(tok.encode, data, path, batch_size=4)
    mtime = path.stat().st_mtime_ns
    cache_tokenizer_outputs(tok.encode, data, path, batch_size=4)  # same key: kept as is
    assert path.stat().st_mtime_ns == mtime
    with torch.no_grad():
        tok.proj.add_(0.1)  # new tokenizer weights
    new_key = content_key(tok.encode, data)
    with pytest.raises(DataError, match="stale"):
        CachedTokens(path, expected_key=new_key)
    assert content_key(tok.encode, _Images(seed=1)) != new_key  # other data, other key
    cache_tokenizer_outputs(tok.encode, data, path, batch_size=4)  # rebuilt
    assert "stale" in capsys.readouterr().out
    assert CachedTokens(path, expected_key=new_key).content_key == new_key
    (tmp_path / "junk.safetensors").write_bytes(b"not a cache")
    with pytest.raises(DataError, match="junk.safetensors"):
        CachedTokens(tmp_path / "junk.safetensors")
    with pytest.raises(ConfigError, match="bound method"):
        cache_tokenizer_outputs(lambda x: x.long(), data, tmp_path / "x.safetensors")


# ----------------------------------------------------------------------------------------------------
# Resumable sampler
# ----------------------------------------------------------------------------------------------------
def test_sampler_deterministic_epochs():
    a, b = ResumableSampler(50, seed=3), ResumableSampler(50, seed=3)
    e0, e1 = list(a), list(a)
    assert sorted(e0) == list(range(50)) and e0 != e1 and e0 == list(b) and e1 == list(b)
    assert list(ResumableSampler(50, seed=4)) != e0
    assert list(ResumableSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_sampler_resume_and_ddp_split():
    full = ResumableSampler(23, seed=1)
    stream = [i for _ in range(3) for i in full]
    s = ResumableSampler(23, seed=1)
    head = list(s)  # one iterator = one epoch
    it = iter(s)
    head += [next(it) for _ in range(7)]  # into the second epoch
    state = s.state_dict()
    assert (state["epoch"], state["position"]) == (1, 7)
    r = ResumableSampler(23, seed=1)
    r.load_state_dict(state)
    tail = list(r) + list(r)
    assert head + tail[: len(stream) - 30] == stream
    with pytest.raises(ConfigError, match="seed"):
        ResumableSampler(23, seed=2).load_state_dict(state)
    # DDP: ranks split each epoch, padded to equal length, together covering every index
    ranks = [list(ResumableSampler(23, seed=1, rank=r, world_size=4)) for r in range(4)]
    assert all(len(x) == 6 for x in ranks)
    assert set(sum(ranks, [])) == set(range(23))
    assert [ranks[r][k] for k in range(6) for r in range(4)][:23] == stream[:23]
