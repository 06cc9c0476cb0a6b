"""study.data: sources, verification, atomic preparation, split, normalisation and label noise. CPU only, no network.

Most tests build a small Fashion-MNIST look-alike (real IDX format, few images) and pin its checksums in RAW_FILES.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

from study import data, mnist1d_generator

N_TRAIN, N_TEST = 600, 100
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of unsigned bytes: big-endian magic, the dimensions, then the data."""
    magic = magic if magic is not None else 0x800 + array.ndim
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def small_files(seed: int = 0) -> dict[str, bytes]:
    """Decompressed contents of four small IDX files with balanced labels; pixels span 0..255."""
    rng = np.random.default_rng(seed)
    images = {n: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for n in (N_TRAIN, N_TEST)}
    labels = {n: rng.permutation(np.arange(n) % 10).astype(np.uint8) for n in (N_TRAIN, N_TEST)}
    return {
        NAMES[0]: idx_bytes(images[N_TRAIN]),
        NAMES[1]: idx_bytes(labels[N_TRAIN]),
        NAMES[2]: idx_bytes(images[N_TEST]),
        NAMES[3]: idx_bytes(labels[N_TEST]),
    }


def write_source(directory: Path, files: dict[str, bytes], gz: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (directory / name).write_bytes(content)
    return directory


def pin(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], dataset: str = "fashion_mnist") -> None:
    """Makes the small files the published ones for this test."""
    specs = tuple(
        data.RawFile(
            name, N_TRAIN if name.startswith("train") else N_TEST, hashlib.sha256(files[name]).hexdigest(), None
        )
        for name in NAMES
    )
    monkeypatch.setitem(data.RAW_FILES, dataset, specs)


@pytest.fixture
def no_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STUDY_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "FASHION_SOURCES_DEBIAN", tmp_path / "no-debian")


@pytest.fixture
def files(monkeypatch: pytest.MonkeyPatch, no_sources: None) -> dict[str, bytes]:
    content = small_files()
    pin(monkeypatch, content)
    return content


@pytest.fixture
def source(tmp_path: Path, files: dict[str, bytes]) -> Path:
    return write_source(tmp_path / "src", files)


@pytest.fixture
def root(tmp_path: Path, source: Path) -> Path:
    root = tmp_path / "data"
    data.prepare("fashion_mnist", str(source), root, progress=False)
    return root


def load(root: Path, **overrides) -> data.Dataset:
    kwargs = {"val_size": 100, "split_seed": 0, "train_size": 0, "test_size": 0, "label_noise": 0.0, "noise_seed": 0}
    return data.load("fashion_mnist", root, **{**kwargs, **overrides})


def raw(root: Path) -> Path:
    return root / "FashionMNIST" / "raw"


# ---- sources ---------------------------------------------------------------------------------------------------------


def test_named_data_dir_comes_first_then_env_then_debian(tmp_path, files, monkeypatch):
    params_dir = write_source(tmp_path / "params", files)
    env_dir = write_source(tmp_path / "env", files)
    debian = write_source(tmp_path / "debian", files)
    monkeypatch.setattr(data, "FASHION_SOURCES_DEBIAN", debian)
    assert data.resolve_source("fashion_mnist", None) == debian
    monkeypatch.setenv("STUDY_DATA_DIR", str(env_dir))
    assert data.resolve_source("fashion_mnist", None) == env_dir
    assert data.resolve_source("fashion_mnist", str(params_dir)) == params_dir


def test_no_source_is_none_and_mnist1d_needs_none(tmp_path, no_sources):
    assert data.resolve_source("fashion_mnist", None) is None
    assert data.resolve_source("mnist", None) is None
    assert data.resolve_source("mnist1d", str(tmp_path / "ignored")) is None


def test_torchvision_layout_is_accepted(tmp_path, files):
    nested = write_source(tmp_path / "tv" / "FashionMNIST" / "raw", files, gz=False)
    assert data.resolve_source("fashion_mnist", str(tmp_path / "tv")) == nested


def test_named_dir_lacking_files_stops_without_fallback(tmp_path, files, monkeypatch):
    monkeypatch.setattr(data, "FASHION_SOURCES_DEBIAN", write_source(tmp_path / "debian", files))
    partial = write_source(tmp_path / "partial", {NAMES[0]: files[NAMES[0]]})
    with pytest.raises(data.DataError, match="missing train-labels-idx1-ubyte"):
        data.prepare("fashion_mnist", str(partial), tmp_path / "data", progress=False)
    monkeypatch.setenv("STUDY_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(data.DataError, match=r"STUDY_DATA_DIR.*no such directory"):
        data.resolve_source("fashion_mnist", None)


def test_study_data_dir_is_honoured_by_prepare(tmp_path, source, monkeypatch):
    monkeypatch.setenv("STUDY_DATA_DIR", str(source))
    manifest = data.prepare("fashion_mnist", None, tmp_path / "data", progress=False)
    assert manifest == {spec.name: spec.sha256 for spec in data.RAW_FILES["fashion_mnist"]}


def test_failed_download_says_how_to_install(tmp_path, files, monkeypatch):
    def offline(self):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    with pytest.raises(data.DataError, match=r"apt-get install -y dataset-fashion-mnist.*STUDY_DATA_DIR"):
        data.prepare("fashion_mnist", None, tmp_path / "data", progress=False)
    assert [p.name for p in (tmp_path / "data").iterdir()] == []  # the scratch download folder is gone


def test_unknown_dataset():
    with pytest.raises(data.DataError, match="unknown dataset 'cifar'"):
        data.resolve_source("cifar", None)


def test_mnist_md5s_are_torchvisions():
    listed = dict(torchvision.datasets.MNIST.resources)
    assert {f"{spec.name}.gz": spec.gz_md5 for spec in data.RAW_FILES["mnist"]} == listed


# ---- prepare ---------------------------------------------------------------------------------------------------------


def test_prepare_lays_out_torchvision_files_and_manifest(root, files):
    assert sorted(p.name for p in raw(root).iterdir()) == sorted(NAMES)
    for name in NAMES:
        assert (raw(root) / name).read_bytes() == files[name]
    ds = load(root, val_size=0)
    assert ds.sizes() == {"train": N_TRAIN, "val": 0, "test": N_TEST, "flipped": 0}


def test_prepare_keeps_verified_files_when_no_source(root, monkeypatch):
    def no_download(self):
        raise AssertionError("must not download")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", no_download)
    assert set(data.prepare("fashion_mnist", None, root, progress=False)) == set(NAMES)


def test_decompressed_sources_are_accepted(tmp_path, files):
    plain = write_source(tmp_path / "plain", files, gz=False)
    data.prepare("fashion_mnist", str(plain), tmp_path / "data", progress=False)
    assert (raw(tmp_path / "data") / NAMES[1]).read_bytes() == files[NAMES[1]]


def corrupted(files: dict[str, bytes], name: str, content: bytes) -> dict[str, bytes]:
    return {**files, name: content}


LABELS, IMAGES = NAMES[1], NAMES[0]


@pytest.mark.parametrize(
    ("name", "make_bad", "message"),
    [
        (LABELS, lambda b: b[:8] + bytes([10]) + b[9:], "label 10 out of range"),
        (LABELS, lambda b: struct.pack(">I", 2051) + b[4:], "magic number 2051, expected 2049"),
        (IMAGES, lambda b: b[:-100], "truncated"),
        (IMAGES, lambda b: b[:-1] + bytes([(b[-1] + 1) % 256]), "checksum mismatch"),
    ],
    ids=["labels_out_of_range", "wrong_magic", "short_file", "checksum_mismatch"],
)
def test_bad_source_file_stops_prepare_and_leaves_nothing(tmp_path, files, name, make_bad, message):
    source = write_source(tmp_path / "src", corrupted(files, name, make_bad(files[name])))
    with pytest.raises(data.DataError, match=message) as caught:
        data.prepare("fashion_mnist", str(source), tmp_path / "data", progress=False)
    assert str(source / f"{name}.gz") in str(caught.value)
    assert "STUDY_DATA_DIR" in str(caught.value)  # says how to get a good copy
    assert name not in {p.name for p in raw(tmp_path / "data").iterdir()}
    assert not [p for p in raw(tmp_path / "data").iterdir() if p.name.endswith(".part")]


def test_truncated_gz_stops_prepare_and_leaves_no_temp_file(tmp_path, files):
    source = write_source(tmp_path / "src", files)
    gz = source / f"{IMAGES}.gz"
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(data.DataError, match=f"{re.escape(str(gz))}: not a complete gzip file"):
        data.prepare("fashion_mnist", str(source), tmp_path / "data", progress=False)
    assert [p.name for p in raw(tmp_path / "data").iterdir()] == []


def test_failed_prepare_keeps_the_good_file_already_there(root, tmp_path, files):
    source = write_source(tmp_path / "bad", corrupted(files, LABELS, files[LABELS][:-5]))
    with pytest.raises(data.DataError):
        data.prepare("fashion_mnist", str(source), root, progress=False)
    assert (raw(root) / LABELS).read_bytes() == files[LABELS]
    assert sorted(p.name for p in raw(root).iterdir()) == sorted(NAMES)


def test_fashion_file_given_as_mnist_is_refused(tmp_path, files, monkeypatch):
    specs = tuple(data.RawFile(s.name, s.count, None, None) for s in data.RAW_FILES["fashion_mnist"])
    monkeypatch.setitem(data.RAW_FILES, "mnist", specs)
    source = write_source(tmp_path / "src", files)
    with pytest.raises(data.DataError, match="Fashion-MNIST's train-images-idx3-ubyte, not MNIST's"):
        data.prepare("mnist", str(source), tmp_path / "data", progress=False)


# ---- load ------------------------------------------------------------------------------------------------------------


def test_idx_files_are_read_as_pixels_over_255_and_their_labels(root, files):
    """The reader takes the bytes after each header: every pixel p becomes p / 255 in float32, in file order."""
    x_train, y_train, x_test, y_test = data._read_idx("fashion_mnist", root)
    for name, x, y in ((NAMES[0], x_train, y_train), (NAMES[2], x_test, y_test)):
        n = len(x)
        pixels = np.frombuffer(files[name], dtype=np.uint8, offset=16).reshape(n, 28 * 28)
        labels = np.frombuffer(files[name.replace("images-idx3", "labels-idx1")], dtype=np.uint8, offset=8)
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (n, 784)
        assert torch.equal(x, torch.from_numpy(pixels.astype(np.float32) / np.float32(255.0)))
        assert y.tolist() == labels.tolist()
    assert float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0  # the look-alike's pixels span 0..255


def test_idx_reader_gives_torchvisions_tensors_bit_for_bit(root):
    """The committed results were made when torchvision read the files: the same bits, so nothing moved."""
    tv = pytest.importorskip("torchvision.datasets")
    ours = data._read_idx("fashion_mnist", root)
    theirs = []
    for train in (True, False):
        split = tv.FashionMNIST(str(root), train=train, download=False)
        theirs += [split.data.reshape(len(split.data), -1).to(torch.float32) / 255.0, split.targets.to(torch.int64)]
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and a.numpy().tobytes() == b.numpy().tobytes()


def test_load_verifies_again(root):
    path = raw(root) / IMAGES
    content = bytearray(path.read_bytes())
    content[-1] ^= 1
    path.write_bytes(bytes(content))
    with pytest.raises(data.DataError, match=f"{re.escape(str(path))}: checksum mismatch.*dvc repro"):
        load(root)
    path.unlink()
    with pytest.raises(data.DataError, match=f"{re.escape(str(path))}: missing"):
        load(root)


def test_split_sizes_and_determinism(root):
    ds = load(root, val_size=100, split_seed=3)
    assert ds.sizes() == {"train": N_TRAIN - 100, "val": 100, "test": N_TEST, "flipped": 0}
    rows = lambda x: {bytes(row.numpy()) for row in x}  # noqa: E731 - random images: rows are unique
    assert not rows(ds.x_train) & rows(ds.x_val)
    assert len(rows(ds.x_train) | rows(ds.x_val)) == N_TRAIN
    again = load(root, val_size=100, split_seed=3)
    assert torch.equal(ds.x_val, again.x_val) and torch.equal(ds.y_train, again.y_train)
    other = load(root, val_size=100, split_seed=4)
    assert not torch.equal(ds.y_val, other.y_val)

    trimmed = load(root, val_size=100, split_seed=3, train_size=50, test_size=20)
    assert trimmed.sizes() == {"train": 50, "val": 100, "test": 20, "flipped": 0}
    assert torch.equal(trimmed.y_val, ds.y_val)  # trimming the training set leaves the validation split alone
    assert torch.equal(trimmed.y_train, ds.y_train[:50])
    assert torch.equal(trimmed.y_test, ds.y_test[:20])


def test_heldout_classes_leave_training_and_validation_and_form_their_own_test_set(root):
    full = load(root, val_size=100, split_seed=3)
    held = load(root, val_size=100, split_seed=3, heldout_classes=(7, 2), label_noise=0.3, noise_seed=1)
    assert held.num_classes == 8 and held.classes == (0, 1, 3, 4, 5, 6, 8, 9)
    original = torch.tensor(held.classes)
    # Standardised with the kept training examples' mean and std: one affine map from the full dataset's values.
    scale = held.x_train.std(correction=0) / (full.x_train[(full.y_train != 7) & (full.y_train != 2)]
                                              .std(correction=0))

    def same_rows(a, b):
        assert a.shape == b.shape and len(a) > 0
        torch.testing.assert_close(a - a[:, :1], scale * (b - b[:, :1]), rtol=1e-4, atol=1e-4)
        return True

    for split in ("train", "val"):
        x_full, y_full = getattr(full, f"x_{split}"), (full.y_train_clean if split == "train" else full.y_val)
        kept = (y_full != 7) & (y_full != 2)
        y_held = held.y_train_clean if split == "train" else held.y_val
        # the same examples in the same order, minus the held-out classes, relabelled 0..7
        assert same_rows(getattr(held, f"x_{split}"), x_full[kept])
        assert torch.equal(original[y_held], y_full[kept])
    assert int(held.y_train.max()) <= 7 and held.flipped.any()  # noise flips within the 8 kept classes
    out = (full.y_test == 7) | (full.y_test == 2)
    assert same_rows(held.x_test, full.x_test[~out]) and torch.equal(original[held.y_test], full.y_test[~out])
    assert same_rows(held.x_heldout, full.x_test[out])
    assert held.sizes()["heldout"] == int(out.sum())
    assert "heldout" not in full.sizes() and full.classes == tuple(range(10))


@pytest.mark.parametrize("classes", [(10,), (-1,), tuple(range(9))])
def test_impossible_heldout_classes_are_refused(root, classes):
    with pytest.raises(data.DataError, match="heldout_classes"):
        load(root, heldout_classes=classes)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"val_size": N_TRAIN}, "leaves no training example"),
        ({"train_size": N_TRAIN}, "only 500 training examples are left"),
        ({"test_size": N_TEST + 1}, "test examples"),
        ({"val_size": -1}, "cannot be negative"),
        ({"label_noise": 1.5}, "between 0 and 1"),
    ],
)
def test_impossible_sizes_are_refused(root, overrides, message):
    with pytest.raises(data.DataError, match=message):
        load(root, **overrides)


def test_normalisation_uses_training_statistics(root):
    ds = load(root, val_size=100)
    assert ds.x_train.dtype == torch.float32 and ds.x_train.shape == (N_TRAIN - 100, 784) and ds.input_dim == 784
    assert ds.y_train.dtype == torch.int64 and ds.flipped.dtype == torch.bool
    assert abs(ds.x_train.mean().item()) < 1e-4
    assert abs(ds.x_train.std(correction=0).item() - 1) < 1e-4
    # one affine map for every split: raw pixels 0 and 255 land on the same values in train and test
    assert ds.x_test.min() == ds.x_train.min() and ds.x_test.max() == ds.x_train.max()


def test_label_noise(root):
    clean = load(root, val_size=0, label_noise=0.0)
    noisy = load(root, val_size=0, label_noise=0.4, noise_seed=7)
    assert torch.equal(noisy.y_train_clean, clean.y_train)
    assert torch.equal(noisy.y_train[~noisy.flipped], clean.y_train[~noisy.flipped])
    assert (noisy.y_train[noisy.flipped] != clean.y_train[noisy.flipped]).all()
    assert abs(noisy.flipped.float().mean().item() - 0.4) < 0.07  # binomial sd at N=600 is 0.02
    assert set(noisy.y_train[noisy.flipped].tolist()) == set(range(10))
    assert noisy.sizes()["flipped"] == int(noisy.flipped.sum())
    assert torch.equal(noisy.y_test, clean.y_test) and torch.equal(noisy.y_val, clean.y_val)

    again = load(root, val_size=0, label_noise=0.4, noise_seed=7)
    assert torch.equal(again.y_train, noisy.y_train)
    other = load(root, val_size=0, label_noise=0.4, noise_seed=8)
    assert not torch.equal(other.flipped, noisy.flipped)
    fewer = load(root, val_size=0, label_noise=0.2, noise_seed=7)
    assert not (fewer.flipped & ~noisy.flipped).any()  # nested: 20% flips a subset of 40%'s


# ---- MNIST-1D --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist1d_root(tmp_path_factory) -> tuple[Path, dict[str, str], float]:
    root = tmp_path_factory.mktemp("mnist1d")
    python_state, numpy_state = random.getstate(), np.random.get_state()
    start = time.perf_counter()
    manifest = data.prepare("mnist1d", None, root, progress=False)
    seconds = time.perf_counter() - start
    assert random.getstate() == python_state
    assert all(
        np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state, strict=True)
    )  # global RNGs untouched
    return root, manifest, seconds


def test_mnist1d_is_the_published_set(mnist1d_root):
    root, manifest, seconds = mnist1d_root
    assert seconds < 20
    assert list(manifest) == ["mnist1d.npz"]
    with np.load(root / "mnist1d.npz", allow_pickle=False) as archive:
        assert {k: archive[k].shape for k in archive.files} == {
            "x": (4000, 40), "y": (4000,), "x_test": (1000, 40), "y_test": (1000,),
            "x_extra": (5000, 40), "y_extra": (5000,),
        }  # fmt: skip
    ds = data.load(
        "mnist1d", root, val_size=2000, split_seed=0, train_size=0, test_size=0, label_noise=0.0, noise_seed=0
    )
    assert ds.sizes() == {"train": 4000, "val": 2000, "test": 4000, "flipped": 0}
    assert ds.input_dim == 40 and ds.num_classes == 10
    assert abs(ds.x_train.mean().item()) < 1e-5 and abs(ds.x_train.std(correction=0).item() - 1) < 1e-5


def test_mnist1d_trains_on_the_published_set_and_validates_and_tests_on_more_examples(mnist1d_root):
    root, _, _ = mnist1d_root
    with np.load(root / "mnist1d.npz", allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    assert np.bincount(arrays["y_extra"]).tolist() == [500] * 10
    published = np.concatenate([arrays["x"], arrays["x_test"]])
    assert not (arrays["x_extra"][:, None, :] == published[None, :, :]).all(axis=2).any()  # no example repeated
    # on the published set's scale: make_dataset's standardisation, not one of their own
    assert abs(arrays["x_extra"].mean()) < 0.02 and abs(arrays["x_extra"].std() - 1) < 0.02
    assert arrays["x_extra"].std() != 1.0

    kwargs = dict(split_seed=0, train_size=0, test_size=0, label_noise=0.0, noise_seed=0)
    ds = data.load("mnist1d", root, val_size=2000, **kwargs)
    assert torch.equal(ds.y_train, torch.from_numpy(arrays["y"]))  # the published training set, whole and in order
    assert torch.equal(ds.y_test[:1000], torch.from_numpy(arrays["y_test"]))  # the published test set comes first
    train = torch.from_numpy(arrays["x"]).float()
    unscaled = ds.x_val * train.std(correction=0) + train.mean()  # load() standardises with the training split's
    extra = torch.from_numpy(arrays["x_extra"]).float()
    nearest = torch.cdist(unscaled, extra, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert nearest.max() < 1e-3  # every validation example is one of the extra examples
    # val_size moves examples between validation and test only; training does not change
    small = data.load("mnist1d", root, val_size=500, **kwargs)
    assert small.sizes() == {"train": 4000, "val": 500, "test": 5500, "flipped": 0}
    assert torch.equal(small.x_train, ds.x_train)
    other = data.load("mnist1d", root, val_size=2000, **{**kwargs, "split_seed": 1})
    assert not torch.equal(other.y_val, ds.y_val) and torch.equal(other.y_train, ds.y_train)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"val_size": 5001},
         r"val_size=5001: MNIST-1D's validation examples come from its 5000 extra examples.*at most 5000"),
        ({"train_size": 4001}, "MNIST-1D has 4000 training examples"),
        ({"test_size": 3001}, "test_size=3001: mnist1d has 3000 test examples"),
    ],
)
def test_impossible_mnist1d_sizes_are_refused(mnist1d_root, overrides, message):
    root, _, _ = mnist1d_root
    kwargs = dict(val_size=3000, split_seed=0, train_size=0, test_size=0, label_noise=0.0, noise_seed=0)
    with pytest.raises(data.DataError, match=message):
        data.load("mnist1d", root, **{**kwargs, **overrides})


def test_mnist1d_file_is_reproducible(mnist1d_root, tmp_path):
    _, manifest, _ = mnist1d_root
    assert data.prepare("mnist1d", None, tmp_path, progress=False) == manifest


def test_mnist1d_file_is_the_same_on_a_cpu_whose_float64_last_bits_differ(mnist1d_root, tmp_path, monkeypatch):
    """The generator's float64 output differs in its last bits between CPUs; the stored float32 file must not."""
    _, manifest, _ = mnist1d_root
    generate = mnist1d_generator._mnist1d_raw
    rng = np.random.default_rng(0)

    def other_cpu(*args):
        x, y = generate(*args)
        ulps = rng.integers(-4, 5, size=x.shape)  # up to 4 float64 ulps either way, in every value
        return x + ulps * np.spacing(x), y

    monkeypatch.setattr(mnist1d_generator, "_mnist1d_raw", other_cpu)
    assert data.prepare("mnist1d", None, tmp_path, progress=False) == manifest


def test_mnist1d_checksum_catches_a_changed_set(mnist1d_root, tmp_path):
    root, _, _ = mnist1d_root
    with np.load(root / "mnist1d.npz", allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    for key, what in (("x", "not the published MNIST-1D set"), ("x_extra", "not the extra examples of seed 4242")):
        changed = {**arrays, key: arrays[key].copy()}
        changed[key][0, 0] = np.nextafter(changed[key][0, 0], np.float32(np.inf))  # one float32 ulp
        np.savez(tmp_path / "mnist1d.npz", **changed)
        with pytest.raises(data.DataError, match=rf"mnist1d\.npz: checksum mismatch, {what}"):
            data.load(
                "mnist1d", tmp_path, val_size=500, split_seed=0, train_size=0, test_size=0, label_noise=0.0,
                noise_seed=0,
            )
    np.savez(tmp_path / "mnist1d.npz", **{k: v for k, v in arrays.items() if k in data.MNIST1D_ARRAYS})
    with pytest.raises(data.DataError, match=r"mnist1d\.npz: no array 'x_extra'.*dvc repro"):
        data.load(
            "mnist1d", tmp_path, val_size=500, split_seed=0, train_size=0, test_size=0, label_noise=0.0, noise_seed=0
        )
    (tmp_path / "mnist1d.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(data.DataError, match=r"mnist1d\.npz: not a readable \.npz"):
        data.load(
            "mnist1d", tmp_path, val_size=500, split_seed=0, train_size=0, test_size=0, label_noise=0.0, noise_seed=0
        )


def test_mnist1d_changed_defaults_are_refused(tmp_path, monkeypatch):
    import mnist1d.data

    published = mnist1d.data.get_dataset_args

    def changed(as_dict=False):
        args = published(as_dict=True)
        args["seed"] = 0
        return args if as_dict else mnist1d.utils.ObjectView(args)

    monkeypatch.setattr(mnist1d.data, "get_dataset_args", changed)
    with pytest.raises(data.DataError, match=r"defaults differ from the published ones \(seed\)"):
        data.prepare("mnist1d", None, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


# ---- the real files, when Debian's package is installed --------------------------------------------------------------


@pytest.mark.skipif(
    not (data.FASHION_SOURCES_DEBIAN / f"{LABELS}.gz").exists(), reason="dataset-fashion-mnist not installed"
)
def test_debian_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.delenv("STUDY_DATA_DIR", raising=False)
    manifest = data.prepare("fashion_mnist", None, tmp_path, progress=False)
    assert manifest == {spec.name: spec.sha256 for spec in data.RAW_FILES["fashion_mnist"]}
    ds = data.load("fashion_mnist", tmp_path, val_size=5000, split_seed=0, train_size=0, test_size=0,
                   label_noise=0.0, noise_seed=0)  # fmt: skip
    assert ds.sizes() == {"train": 55000, "val": 5000, "test": 10000, "flipped": 0}
    assert ds.input_dim == 784
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert (torch.bincount(ds.y_train) + torch.bincount(ds.y_val)).tolist() == [6000] * 10
    assert torch.bincount(ds.y_train).min() > 5300  # a random split stays about balanced
