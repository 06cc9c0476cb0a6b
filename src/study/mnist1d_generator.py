"""MNIST-1D generated offline by the data stage with the ``mnist1d`` package: its published arguments and templates
checked, the published set reproduced byte for byte and more examples drawn from the same generator.

Imported by ``data.prepare`` alone; imports only ``data`` from the study.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from study import data

# mnist1d.data.get_dataset_args() as published (its download url left out: the set is generated, never downloaded).
MNIST1D_ARGS = {
    "num_samples": 5000,
    "train_split": 0.8,
    "template_len": 12,
    "padding": [36, 60],
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
    "seed": 42,
}
MNIST1D_TEMPLATES_SHA256 = "8a0e30f6b693eaa3acc8e8ccea0c0f662c521adb06ba2306b542ce52f53491f5"  # bytes of x, t, y


@contextlib.contextmanager
def _global_rngs_kept() -> Iterator[None]:
    """mnist1d seeds the global random and numpy generators; put them back so generating has no side effects."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's format (readable by np.load with allow_pickle=False), with fixed zip timestamps so that the same
    arrays always give the same bytes (a stable sha256 for the manifest and DVC)."""
    with data.temporary_beside(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def prepare(root: Path, progress: bool) -> dict[str, str]:
    """root/mnist1d.npz: the published set and the extra examples, generated, checked, written atomically; returns
    {file name: sha256}."""
    import mnist1d.data  # only the data stage generates; it also pulls in requests, which nothing here uses
    import mnist1d.utils

    fix = data.get_a_copy("mnist1d")
    args = mnist1d.data.get_dataset_args(as_dict=True)
    published = {key: value for key, value in args.items() if key != "url"}
    if published != MNIST1D_ARGS:
        changed = ", ".join(
            sorted(k for k in published.keys() | MNIST1D_ARGS.keys() if published.get(k) != MNIST1D_ARGS.get(k))
        )
        raise data.DataError(
            f"mnist1d.data.get_dataset_args(): defaults differ from the published ones ({changed}). {fix}"
        )
    templates = mnist1d.data.get_templates()
    digest = hashlib.sha256()
    for key in ("x", "t", "y"):
        digest.update(np.ascontiguousarray(templates[key]).tobytes())
    if digest.hexdigest() != MNIST1D_TEMPLATES_SHA256:
        raise data.DataError(f"mnist1d.data.get_templates(): the digit templates differ from the published ones. {fix}")
    if progress:
        extra = data.MNIST1D_EXTRA_ARRAYS["y_extra"][0][0]
        print(f"data: generating MNIST-1D and {extra} extra examples -> {root / data.MNIST1D_FILE}", file=sys.stderr)
    with _global_rngs_kept():
        x_raw, y = _mnist1d_raw(mnist1d.data, mnist1d.data.get_dataset_args(), templates)
        extra_args = mnist1d.data.get_dataset_args(as_dict=True) | {"seed": data.MNIST1D_EXTRA_SEED}
        x_extra_raw, y_extra = _mnist1d_raw(mnist1d.data, mnist1d.utils.ObjectView(extra_args), templates)
    mean, std = x_raw.mean(), x_raw.std()  # make_dataset's standardisation of the published set, kept for the extra
    x = (x_raw - mean) / std
    split = int(len(y) * MNIST1D_ARGS["train_split"])
    arrays = {"x": x[:split], "y": y[:split], "x_test": x[split:], "y_test": y[split:],
              "x_extra": (x_extra_raw - mean) / std, "y_extra": y_extra}
    arrays = {key: np.ascontiguousarray(array, dtype=np.float32 if key.startswith("x") else None)
              for key, array in arrays.items()}
    data.check_mnist1d(arrays, "mnist1d.data (generated)", fix)
    _write_npz(root / data.MNIST1D_FILE, arrays)
    return {data.MNIST1D_FILE: data.file_digest(root / data.MNIST1D_FILE, "sha256")}


def _mnist1d_raw(generator, args, templates) -> tuple[np.ndarray, np.ndarray]:
    """mnist1d.data.make_dataset's examples before its final standardisation: the same calls in the same order
    (seed, one ``transform`` per example class by class, one shuffle), so that the published set comes out byte for
    byte (its checksum proves it) and other seeds can be put on the published set's scale. ``generator`` is the
    ``mnist1d.data`` module; returns inputs [N, 40] float64 and labels [N] int64."""
    generator.set_seed(args.seed)
    xs, ys = [], []
    per_class = args.num_samples // len(templates["y"])
    for label_ix in range(len(templates["y"])):
        for _ in range(per_class):
            x, _shifts = generator.transform(templates["x"][label_ix], templates["t"], args)
            xs.append(x)
            ys.append(templates["y"][label_ix])
    shuffle = np.random.permutation(len(ys))
    return np.stack(xs)[shuffle], np.stack(ys)[shuffle]
