"""The datasets as normalised tensors in memory: `prepare` fetches, verifies and lays out the raw files, `load` reads.

Imports nothing from the study package but ``mnist1d_generator`` (in ``prepare``, which generates MNIST-1D offline);
the IDX files are read with numpy once verified (torchvision only downloads MNIST, when online).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

FASHION_SOURCES_DEBIAN = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
DATASETS = ("fashion_mnist", "mnist", "mnist1d")
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
IDX_LABELS_MAGIC = 2049  # unsigned bytes, one dimension
IDX_IMAGES_MAGIC = 2051  # unsigned bytes, three dimensions


class DataError(RuntimeError):
    """A data problem, worded for the user: which file, what is wrong with it, how to get a good copy."""


@dataclass(frozen=True)
class RawFile:
    """One of the four IDX files that torchvision's dataset classes read from <root>/<FashionMNIST|MNIST>/raw/."""

    name: str  # decompressed name, as torchvision reads it
    count: int  # examples its header must declare
    sha256: str | None  # of the decompressed file; None where no digest is pinned (MNIST: structural checks only)
    gz_md5: str | None  # of the .gz, as torchvision.datasets.MNIST.resources lists it; None where not pinned


RAW_FILES: dict[str, tuple[RawFile, ...]] = {
    # Debian repacks the .gz files (their md5s differ from upstream's), so Fashion-MNIST is pinned by the
    # decompressed content, which equals upstream's.
    "fashion_mnist": (
        RawFile(
            "train-images-idx3-ubyte", 60000, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", None
        ),
        RawFile(
            "train-labels-idx1-ubyte", 60000, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", None
        ),
        RawFile(
            "t10k-images-idx3-ubyte", 10000, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", None
        ),
        RawFile(
            "t10k-labels-idx1-ubyte", 10000, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", None
        ),
    ),
    "mnist": (
        RawFile("train-images-idx3-ubyte", 60000, None, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        RawFile("train-labels-idx1-ubyte", 60000, None, "d53e105ee54ea40749a09fcbcd1e9432"),
        RawFile("t10k-images-idx3-ubyte", 10000, None, "9fb629c4189551a2d022fa330f9573f3"),
        RawFile("t10k-labels-idx1-ubyte", 10000, None, "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
}
TORCHVISION_CLASSES = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST"}  # also the folder names under root

TRANSFER_SIZE = 10_000  # training images of every class that a linear probe on frozen features is fitted on
VAL_NOISE_SEED_OFFSET = 1_000_003  # val_noise_seed(noise_seed) = noise_seed + this

MNIST1D_FILE = "mnist1d.npz"
MNIST1D_VERSION = "0.0.2.post1"  # the mnist1d release whose generator was checked against the constants below
# The arrays as make_dataset returns them, inputs stored as float32: the precision training reads, and the one that is
# the same on every CPU. The generator's float64 output differs in its last bits between machines (a 2-core AVX2-only
# AMD EPYC and the machines that made the committed results disagree there); rounded to float32 it does not, so the
# stored file, its checksum and DVC's hash of it are the same everywhere.
MNIST1D_ARRAYS = {  # name: (shape, dtype)
    "x": ((4000, 40), "float32"),
    "y": ((4000,), "int64"),
    "x_test": ((1000, 40), "float32"),
    "y_test": ((1000,), "int64"),
}
MNIST1D_SHA256 = "b09ad3e22c854bc5a1948b85c373aab653ceb38c9170f5ed05b7d054e4160db9"  # bytes of those arrays, in order
# Extra examples for a larger validation and test split (the published 4,000 training examples stay whole): the
# same generator with the published args but this seed instead of 42, standardised with the published set's raw
# mean and std (as make_dataset standardises the published set), so they are more draws of the same distribution.
MNIST1D_EXTRA_SEED = 4242
MNIST1D_EXTRA_ARRAYS = {"x_extra": ((5000, 40), "float32"), "y_extra": ((5000,), "int64")}  # 500 per class
MNIST1D_EXTRA_SHA256 = "0328dd5fd421f41c5a7150312e27ad98cf115b853003193ca2a55c50e6103c8a"  # of x_extra, y_extra


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value, so compare fields explicitly
class Dataset:
    """A dataset after split, trimming, normalisation and label noise. Inputs are [N, D] float32, labels [N] int64."""

    name: str
    x_train: Tensor
    y_train: Tensor  # noisy where label_noise > 0: what the models train on
    y_train_clean: Tensor
    flipped: Tensor  # [N] bool, True where y_train differs from y_train_clean
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    # Test images of the classes held out of training and validation (the "none of the above" inputs), [H, D],
    # and the original class of each kept label: label k of every split above is class ``classes[k]``.
    x_heldout: Tensor = field(default_factory=lambda: torch.empty(0))
    classes: tuple[int, ...] = ()
    # With held-out classes: the original class of each held-out test image [H], and training images of every
    # class, held-out ones included, with their original classes (the first TRANSFER_SIZE of the training part of
    # the split): what a linear probe on the frozen features is fitted on (study.features.linear_probe).
    y_heldout: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    x_transfer: Tensor = field(default_factory=lambda: torch.empty(0))
    y_transfer: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    # The validation labels with the training labels' noise (same rate, flips seeded by val_noise_seed(noise_seed)):
    # what the tune stage scores on, as a practitioner with noisy labels only would. Empty: none were made.
    y_val_noisy: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    @property
    def input_dim(self) -> int:
        return self.x_train.shape[1]

    def with_noisy_validation(self) -> Dataset:
        """This dataset with ``y_val`` replaced by the noisy validation labels (itself when there are none). Training
        keeps reading the clean ``y_val`` (an oracle under label noise); tuning reads this."""
        if not len(self.y_val_noisy):
            return self
        return replace(self, y_val=self.y_val_noisy)

    def sizes(self) -> dict[str, int]:
        sizes = {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}
        sizes["flipped"] = int(self.flipped.sum())
        if len(self.x_transfer):
            sizes["transfer"] = len(self.x_transfer)
        return {**sizes, "heldout": len(self.x_heldout)} if len(self.x_heldout) else sizes


# ---- where the files come from ---------------------------------------------------------------------------------------


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")


def get_a_copy(dataset: str) -> str:
    if dataset == "fashion_mnist":
        return (
            "Get a good copy: apt-get install --reinstall dataset-fashion-mnist, or put the four IDX files "
            "(.gz or decompressed) in a directory and set STUDY_DATA_DIR."
        )
    if dataset == "mnist":
        return (
            "Get a good copy: put MNIST's four IDX files (the .gz files torchvision lists, or decompressed) in a "
            "directory and set STUDY_DATA_DIR, or run the data stage once online so torchvision downloads them."
        )
    return (
        f"It is generated offline by the data stage with mnist1d {MNIST1D_VERSION} "
        f"(pip install mnist1d=={MNIST1D_VERSION}); rerun the data stage (dvc repro) to rebuild it."
    )


def _rebuild(dataset: str) -> str:
    if dataset == "mnist1d":
        return get_a_copy(dataset)
    fix = get_a_copy(dataset)
    return f"Rebuild it with the data stage (dvc repro); if that fails too, {fix[0].lower()}{fix[1:]}"


def _source_file(directory: Path, name: str) -> Path | None:
    """The .gz if present (MNIST's .gz is checkable against torchvision's md5), else the decompressed file."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def resolve_source(dataset: str, data_dir: str | None) -> Path | None:
    """The directory holding the four raw IDX files, or None: nothing local (torchvision downloads when online).

    In order: data_dir (from the params), else STUDY_DATA_DIR; a directory named there is used or refused, never
    skipped. It may hold the files directly or in torchvision's layout (<dir>/FashionMNIST/raw). Then, for
    Fashion-MNIST, Debian's directory when it holds the files. MNIST-1D is generated, so it has no source.
    """
    _check_dataset(dataset)
    if dataset == "mnist1d":
        return None
    names = [spec.name for spec in RAW_FILES[dataset]]
    env_dir = os.environ.get("STUDY_DATA_DIR") or None
    named, origin = (data_dir, "data_dir in the params") if data_dir else (env_dir, "STUDY_DATA_DIR")
    if named:
        base = Path(named).expanduser()
        if not base.is_dir():
            raise DataError(f"{base} (from {origin}): no such directory. {get_a_copy(dataset)}")
        for candidate in (base / TORCHVISION_CLASSES[dataset] / "raw", base):
            if all(_source_file(candidate, name) for name in names):
                return candidate
        missing = [name for name in names if _source_file(base, name) is None]
        raise DataError(
            f"{base} (from {origin}): missing {', '.join(missing)} (each as .gz or decompressed, directly in it or "
            f"under {TORCHVISION_CLASSES[dataset]}/raw/). {get_a_copy(dataset)}"
        )
    if dataset == "fashion_mnist" and all(_source_file(FASHION_SOURCES_DEBIAN, name) for name in names):
        return FASHION_SOURCES_DEBIAN
    return None


# ---- verification ----------------------------------------------------------------------------------------------------


def file_digest(path: Path, algorithm: str) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _idx_format(spec: RawFile) -> tuple[bool, int, int]:
    """(labels?, magic number, dimensions) of an IDX file; its header is 4 bytes per field: magic, then each size."""
    is_labels = "labels" in spec.name
    return (True, IDX_LABELS_MAGIC, 1) if is_labels else (False, IDX_IMAGES_MAGIC, 3)


def _check_idx(spec: RawFile, path: Path, shown: Path, fix: str) -> None:
    """Structure of an IDX file (magic, declared count and shape against the file length, label range), so that a
    bad file gets a specific message before torchvision reads it."""
    is_labels, magic, dims = _idx_format(spec)
    header_len = 4 * (1 + dims)
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(header_len)
    if len(header) < header_len:
        raise DataError(f"{shown}: {size} bytes, shorter than an IDX header (file is truncated). {fix}")
    found_magic, count, *shape = struct.unpack(f">{1 + dims}I", header)  # IDX headers are big-endian
    if found_magic != magic:
        kind = "label" if is_labels else "image"
        raise DataError(
            f"{shown}: IDX magic number {found_magic}, expected {magic} (an {kind} file of unsigned bytes); "
            f"the file is corrupt or not {spec.name}. {fix}"
        )
    if count != spec.count:
        raise DataError(f"{shown}: header declares {count} examples, expected {spec.count}. {fix}")
    if not is_labels and tuple(shape) != IMAGE_SHAPE:
        raise DataError(f"{shown}: header declares {shape[0]}x{shape[1]} images, expected 28x28. {fix}")
    expected = header_len + count * int(np.prod(shape, dtype=np.int64))
    if size != expected:
        raise DataError(
            f"{shown}: {size} bytes, but its header declares {count} examples, {expected} bytes "
            f"(file is truncated or has trailing bytes). {fix}"
        )
    if is_labels:
        labels = np.frombuffer(path.read_bytes(), dtype=np.uint8, offset=header_len)
        if labels.size and int(labels.max()) >= NUM_CLASSES:
            raise DataError(f"{shown}: label {int(labels.max())} out of range 0..{NUM_CLASSES - 1}. {fix}")


def _verify_raw(dataset: str, spec: RawFile, path: Path, *, shown: Path | None = None, fix: str) -> str:
    """Checks one decompressed IDX file; returns its sha256. `shown` names the file the user can act on."""
    shown = shown or path
    if not path.is_file():
        raise DataError(f"{shown}: missing. {fix}")
    _check_idx(spec, path, shown, fix)
    digest = file_digest(path, "sha256")
    if spec.sha256 is not None and digest != spec.sha256:
        raise DataError(f"{shown}: checksum mismatch (file is corrupt or truncated). {fix}")
    fashion = {other.name: other.sha256 for other in RAW_FILES["fashion_mnist"]}
    if dataset == "mnist" and digest == fashion.get(spec.name):  # same names and format: an easy mix-up
        raise DataError(f"{shown}: this is Fashion-MNIST's {spec.name}, not MNIST's. {fix}")
    return digest


def check_mnist1d(arrays: dict[str, np.ndarray], shown: str, fix: str) -> None:
    expected = (
        (MNIST1D_ARRAYS, MNIST1D_SHA256, "not the published MNIST-1D set"),
        (MNIST1D_EXTRA_ARRAYS, MNIST1D_EXTRA_SHA256, f"not the extra examples of seed {MNIST1D_EXTRA_SEED}"),
    )
    for specs, sha256, what in expected:
        for key, (shape, dtype) in specs.items():
            if key not in arrays:
                raise DataError(f"{shown}: no array {key!r}. {fix}")
            if arrays[key].shape != shape or arrays[key].dtype != np.dtype(dtype):
                found = f"{arrays[key].dtype} {arrays[key].shape}"
                raise DataError(f"{shown}: array {key!r} is {found}, expected {dtype} {shape}. {fix}")
        for key in specs:
            if key.startswith("y") and (arrays[key].min() < 0 or arrays[key].max() >= NUM_CLASSES):
                raise DataError(f"{shown}: labels in {key!r} out of range 0..{NUM_CLASSES - 1}. {fix}")
        digest = hashlib.sha256()
        for key in specs:
            digest.update(np.ascontiguousarray(arrays[key]).tobytes())
        if digest.hexdigest() != sha256:
            raise DataError(f"{shown}: checksum mismatch, {what} (corrupt or generated differently). {fix}")


# ---- prepare: the data stage -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def temporary_beside(dest: Path) -> Iterator[Path]:
    """A temporary path in dest's directory, moved onto dest (atomically, os.replace) only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _install(dataset: str, spec: RawFile, src: Path, dest: Path, progress: bool) -> str:
    """Copies (decompressing a .gz) src to dest, verified before it lands there; returns its sha256."""
    fix = get_a_copy(dataset)
    if progress:
        print(f"data: {src} -> {dest}", file=sys.stderr)
    if src.suffix == ".gz" and spec.gz_md5 is not None and file_digest(src, "md5") != spec.gz_md5:
        raise DataError(f"{src}: md5 differs from torchvision's list (file is corrupt, truncated or repacked). {fix}")
    with temporary_beside(dest) as tmp:
        with tmp.open("wb") as out:
            if src.suffix == ".gz":
                try:
                    with gzip.open(src, "rb") as compressed:
                        shutil.copyfileobj(compressed, out, 1 << 20)
                except (EOFError, gzip.BadGzipFile, zlib.error) as err:
                    raise DataError(f"{src}: not a complete gzip file ({err}): truncated or corrupt. {fix}") from err
            else:
                with src.open("rb") as plain:
                    shutil.copyfileobj(plain, out, 1 << 20)
        return _verify_raw(dataset, spec, tmp, shown=src, fix=fix)


def _torchvision_class(dataset: str):
    """torchvision's dataset class for ``dataset``, imported here: importing torchvision takes about a second (it
    brings torch._dynamo), which every stage that never reads an IDX file would pay at start-up."""
    import torchvision.datasets

    return getattr(torchvision.datasets, TORCHVISION_CLASSES[dataset])


def _download(dataset: str, root: Path, progress: bool) -> None:
    """torchvision's own download, into a scratch folder first so that a failed one leaves nothing behind."""
    raw = root / TORCHVISION_CLASSES[dataset] / "raw"
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=root, prefix=".download."))
    debian = dataset == "fashion_mnist"
    try:
        cls = _torchvision_class(dataset)
        try:
            for train in (True, False):
                cls(str(scratch), train=train, download=True)
        except Exception as err:  # no network shows up as URLError, OSError or RuntimeError depending on the mirror
            places = "no data_dir, no STUDY_DATA_DIR" + (f", none in {FASHION_SOURCES_DEBIAN}" if debian else "")
            install = "apt-get install -y dataset-fashion-mnist, or " if debian else ""
            raise DataError(
                f"{raw}: no local {TORCHVISION_CLASSES[dataset]} files ({places}) and torchvision's download failed "
                f"({type(err).__name__}: {err}). Install them: {install}put the four IDX files in a directory and "
                "set STUDY_DATA_DIR."
            ) from err
        downloaded = scratch / TORCHVISION_CLASSES[dataset] / "raw"
        for spec in RAW_FILES[dataset]:
            _install(dataset, spec, downloaded / spec.name, raw / spec.name, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def prepare(dataset: str, data_dir: str | None, root: Path, *, progress: bool = True) -> dict[str, str]:
    """The data stage: lays the dataset out under root, verified, and returns {file name: sha256} of what it wrote.

    Fashion-MNIST and MNIST: the four decompressed IDX files in root/<FashionMNIST|MNIST>/raw/ (torchvision's layout),
    copied from resolve_source(...); with no source, files already verified in root are kept, else torchvision
    downloads. MNIST-1D: root/mnist1d.npz, generated with mnist1d's published defaults (never downloaded).
    Every file is written to a temporary name and moved into place only after it passed its checks.
    """
    _check_dataset(dataset)
    root = Path(root)
    if dataset == "mnist1d":
        from study import mnist1d_generator  # only the data stage generates (it needs the mnist1d package)

        return mnist1d_generator.prepare(root, progress)
    raw = root / TORCHVISION_CLASSES[dataset] / "raw"
    source = resolve_source(dataset, data_dir)
    if source is not None:
        return {
            spec.name: _install(dataset, spec, _source_file(source, spec.name), raw / spec.name, progress)
            for spec in RAW_FILES[dataset]
        }
    try:
        return _manifest(dataset, raw)
    except DataError:
        _download(dataset, root, progress)
    return _manifest(dataset, raw)


def _manifest(dataset: str, raw: Path) -> dict[str, str]:
    fix = _rebuild(dataset)
    return {spec.name: _verify_raw(dataset, spec, raw / spec.name, fix=fix) for spec in RAW_FILES[dataset]}


# ---- load ------------------------------------------------------------------------------------------------------------


def _read_idx(dataset: str, root: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inputs in [0, 1] as float32 [N, 784] and labels int64 [N], train then test. The files are verified first
    (structure and pinned checksums), so reading them is taking the bytes after the header: no torchvision, whose
    builds are tied to one torch release (the study runs on a CPU-only torch where torchvision has none)."""
    raw = root / TORCHVISION_CLASSES[dataset] / "raw"
    _manifest(dataset, raw)
    specs = {spec.name: spec for spec in RAW_FILES[dataset]}
    arrays = []
    for split in ("train", "t10k"):
        images = _idx_bytes(specs[f"{split}-images-idx3-ubyte"], raw)
        labels = _idx_bytes(specs[f"{split}-labels-idx1-ubyte"], raw)
        arrays += [
            torch.from_numpy(images.reshape(len(labels), -1).astype(np.float32)) / 255.0,
            torch.from_numpy(labels.astype(np.int64)),
        ]
    return tuple(arrays)


def _idx_bytes(spec: RawFile, raw: Path) -> np.ndarray:
    """The unsigned bytes after a verified IDX file's header."""
    _, _, dims = _idx_format(spec)
    return np.frombuffer((raw / spec.name).read_bytes(), dtype=np.uint8, offset=4 * (1 + dims))


def _read_mnist1d(root: Path) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The published training and test sets, then the extra examples: inputs float32 [N, 40], labels int64 [N]."""
    path = root / MNIST1D_FILE
    fix = _rebuild("mnist1d")
    if not path.is_file():
        raise DataError(f"{path}: missing. {fix}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path}: not a readable .npz ({err}); it is corrupt or truncated. {fix}") from err
    check_mnist1d(arrays, str(path), fix)
    return tuple(torch.from_numpy(arrays[key]).to(torch.float32 if key.startswith("x") else torch.int64)
                 for key in ("x", "y", "x_test", "y_test", "x_extra", "y_extra"))


def _mnist1d_splits(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, x_extra: Tensor,
                    y_extra: Tensor, *, val_size: int, split_seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST-1D's validation split is the first val_size of a permutation of the extra examples seeded by split_seed;
    the rest of them follow the published test set. The published training set stays whole (the published
    benchmark). Returns the validation inputs and labels, then the test inputs and labels."""
    if val_size > len(y_extra):
        raise DataError(
            f"val_size={val_size}: MNIST-1D's validation examples come from its {len(y_extra)} extra examples (the "
            f"published {len(y_train)} training examples stay whole for training); set val_size to at most "
            f"{len(y_extra)} in the condition's params."
        )
    order = torch.randperm(len(y_extra), generator=torch.Generator().manual_seed(split_seed))
    val, rest = order[:val_size], order[val_size:]
    return x_extra[val], y_extra[val], torch.cat([x_test, x_extra[rest]]), torch.cat([y_test, y_extra[rest]])


def heldout_problem(classes: Sequence[int]) -> str | None:
    """Why ``classes`` cannot be held out of training, or None (also for none at all: every class is trained on)."""
    if (len(set(classes)) != len(classes) or not all(0 <= c < NUM_CLASSES for c in classes)
            or len(classes) > NUM_CLASSES - 2):
        return (f"it must list class indices 0..{NUM_CLASSES - 1}, each once, at most {NUM_CLASSES - 2} of them "
                "(leaving at least two classes to train on)")
    return None


def val_noise_seed(noise_seed: int) -> int:
    """The seed of the validation split's label flips: apart from the training flips' (``noise_seed``), so the two
    draws are independent, and fixed by it, so the same params flip the same validation labels."""
    return noise_seed + VAL_NOISE_SEED_OFFSET


def _flip_labels(labels: Tensor, rate: float, seed: int, num_classes: int) -> tuple[Tensor, Tensor]:
    """Symmetric label noise: each label flips with probability `rate` to a uniformly chosen *other* class.

    Both draws are made for every example, so the flipped set depends on (seed, N) only and grows with the rate:
    at one seed, the labels flipped at 20% are among those flipped at 40%.
    """
    generator = torch.Generator().manual_seed(seed)
    flipped = torch.rand(len(labels), generator=generator) < rate
    shift = torch.randint(1, num_classes, (len(labels),), generator=generator)  # 1..K-1: never the same class
    return torch.where(flipped, (labels + shift) % num_classes, labels), flipped


def load(
    dataset: str,
    root: Path,
    *,
    val_size: int,
    split_seed: int,
    train_size: int,
    test_size: int,
    label_noise: float,
    noise_seed: int,
    heldout_classes: tuple[int, ...] = (),
) -> Dataset:
    """Reads what prepare() wrote under root (verified again) and returns the split, normalised dataset.

    Validation: the first val_size of a permutation of the training set seeded by split_seed; training: the rest,
    or its first train_size when train_size > 0. Test: the first test_size examples when test_size > 0.
    MNIST-1D differs: validation is the first val_size of a permutation (split_seed) of the extra examples, the test
    set is the published 1,000 followed by the remaining extra examples, and training is the published 4,000 (or
    their first train_size), so validation takes nothing from training.
    Inputs are standardised with one scalar mean and std of the training split (after images are scaled to [0, 1]).
    Label noise touches the training labels; validation and test labels stay clean. ``y_val_noisy`` holds the
    validation labels flipped at the same rate with seed ``val_noise_seed(noise_seed)``, for the tune stage.

    ``heldout_classes`` are removed from training and validation after the split (so the other classes keep the
    examples they have without it); their test images become ``x_heldout`` and the kept classes are relabelled
    0..K'-1 in their original order (``classes`` maps back).
    """
    _check_dataset(dataset)
    root = Path(root)
    if val_size < 0 or train_size < 0 or test_size < 0:
        sizes = f"val_size={val_size}, train_size={train_size}, test_size={test_size}"
        raise DataError(f"{sizes}: sizes cannot be negative.")
    n_published = 0  # MNIST-1D: training examples of the published set, which validation never takes from
    if dataset == "mnist1d":
        x_all, y_all, x_test, y_test, x_extra, y_extra = _read_mnist1d(root)
        n_published = len(y_all)
        x_val, y_val, x_test, y_test = _mnist1d_splits(x_all, y_all, x_test, y_test, x_extra, y_extra,
                                                       val_size=val_size, split_seed=split_seed)
        x_all, y_all = torch.cat([x_all, x_val]), torch.cat([y_all, y_val])  # validation last: indexed as below
    else:
        x_all, y_all, x_test, y_test = _read_idx(dataset, root)

    n_all, n_test = len(y_all), len(y_test)
    if n_published and train_size > n_published:
        raise DataError(f"train_size={train_size}: MNIST-1D has {n_published} training examples (the published set; "
                        "validation comes from the extra examples).")
    if val_size + 1 > n_all:
        raise DataError(f"val_size={val_size} leaves no training example: {dataset} has {n_all} training examples.")
    if train_size > n_all - val_size:
        left = n_all - val_size
        raise DataError(f"train_size={train_size}: only {left} training examples are left after val_size={val_size}.")
    if test_size > n_test:
        raise DataError(f"test_size={test_size}: {dataset} has {n_test} test examples.")
    if not 0.0 <= label_noise <= 1.0:
        raise DataError(f"label_noise={label_noise}: a share of the training labels, between 0 and 1.")

    problem = heldout_problem(heldout_classes)
    if problem:
        raise DataError(f"heldout_classes={list(heldout_classes)}: {problem}.")
    heldout = tuple(sorted(heldout_classes))

    if n_published:  # validation (drawn above, placed last), then the published training set in its own order
        order = torch.arange(n_all).roll(val_size)
    else:
        order = torch.randperm(n_all, generator=torch.Generator().manual_seed(split_seed))
    val_index, train_index = order[:val_size], order[val_size:]
    if train_size > 0:
        train_index = train_index[:train_size]
    if test_size > 0:
        x_test, y_test = x_test[:test_size], y_test[:test_size]

    transfer_index = train_index[:TRANSFER_SIZE] if heldout else train_index[:0]
    kept = torch.tensor([c for c in range(NUM_CLASSES) if c not in heldout])
    relabel = torch.full((NUM_CLASSES,), -1, dtype=torch.long)
    relabel[kept] = torch.arange(len(kept))
    train_index = train_index[relabel[y_all[train_index]] >= 0]
    val_index = val_index[relabel[y_all[val_index]] >= 0]
    out_of_classes = relabel[y_test] < 0

    x_train = x_all[train_index]
    mean, std = x_train.mean(), x_train.std(correction=0)
    if not std > 0:
        raise DataError(
            f"{root}: the {dataset} training inputs are constant; the files are corrupt. {_rebuild(dataset)}"
        )

    def standardise(x: Tensor) -> Tensor:
        return ((x - mean) / std).contiguous()

    y_train_clean = relabel[y_all[train_index]]
    y_train, flipped = _flip_labels(y_train_clean, label_noise, noise_seed, len(kept))
    y_val = relabel[y_all[val_index]]
    y_val_noisy, _ = _flip_labels(y_val, label_noise, val_noise_seed(noise_seed), len(kept))
    return Dataset(
        name=dataset,
        x_train=standardise(x_train),
        y_train=y_train,
        y_train_clean=y_train_clean,
        flipped=flipped,
        x_val=standardise(x_all[val_index]),
        y_val=y_val,
        x_test=standardise(x_test[~out_of_classes]),
        y_test=relabel[y_test[~out_of_classes]],
        num_classes=len(kept),
        x_heldout=standardise(x_test[out_of_classes]),
        classes=tuple(kept.tolist()),
        y_heldout=y_test[out_of_classes],
        x_transfer=standardise(x_all[transfer_index]),
        y_transfer=y_all[transfer_index],
        y_val_noisy=y_val_noisy,
    )
