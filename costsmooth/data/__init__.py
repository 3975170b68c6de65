"""Datasets from local files only (nothing is downloaded).

Every dataset is a ``torch.utils.data.Dataset``: ``len(ds)``, ``ds[i] -> (input, label)``,
``ds.classes``, plus ``input_shape``, ``labels``, ``take(indices)`` and ``fingerprint()``. The embedded
datasets, CIFAR-10, MNIST and ``.pt`` files are in-memory tensors (``Dataset``); ImageNet, image
folders and HAM10000 are decoded lazily from their files (``images.ImageFiles``). Runs read both
through ``loading.batches`` (a DataLoader with worker processes for images).

Embedded (shipped with scikit-learn):
- ``digits``: 1797 handwritten digits, 8x8 pixels in [0, 1] as ``[1, 8, 8]``, 10 classes. Fixed
  stratified split: 30% test (540 images), ``random_state=0``.
- ``breast_cancer``: 569 tumours (Wisconsin diagnostic), 30 features standardised with the training
  split's mean and std; classes 0 = malignant, 1 = benign (malignant -> benign is the harmful error).
  Fixed stratified split: 30% test (171), ``random_state=0``.
- ``wine``: 178 wines of three cultivars, 13 features standardised with the training split's mean and
  std; classes 0, 1, 2 (class 1 lies between 0 and 2). Fixed stratified split: 30% test (54),
  ``random_state=0``.
Loaders of files the user has: ImageNet (``ROOT/{train,val}/<wnid>/*.JPEG``), CIFAR-10 (python pickle
batches), MNIST (IDX files, optionally .gz), HAM10000 (images + ``HAM10000_metadata.csv``), and a
generic image folder ``root/{train,test}/<class>/<image>`` (or ``root/<class>/<image>``, split "all").
``load_dataset`` also reads a ``.pt`` file (``PT_LAYOUT``).
"""
from __future__ import annotations

import csv
import glob
import gzip
import os
import pickle
import struct
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..cost import CostMatrix
from .base import SPLITS, DatasetError, check_split, tensor_digest
from .images import IMAGE_EXTENSIONS, ImageFiles, load_image_folder, load_imagenet
from .loading import Batch, batches, channel_stats, default_workers
from .transforms import RESIZE_POLICIES, ImageTransform, random_crop_flip

__all__ = ["NORMALIZATION", "Dataset", "ImageFiles", "load_dataset", "load_digits", "load_breast_cancer",
           "load_wine", "load_cifar10", "load_mnist", "load_ham10000", "load_image_folder", "load_imagenet", "ham10000_cost_matrix",
           "HAM10000_CLASSES", "HAM10000_MALIGNANT", "DatasetError", "Batch", "batches", "channel_stats",
           "default_workers", "ImageTransform", "DATASET_NAMES", "parse_resize"]


# Per-channel input normalisation of the published randomized-smoothing models (Cohen et al.'s
# ``datasets.py``): (mean, std). Models built for these datasets carry it as their first layer.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass
class Dataset(torch.utils.data.Dataset):
    """In-memory inputs ``[N, *shape]`` (float32, in the model's input space) and int64 labels ``[N]``.

    ``augment`` (optional, ``(input, numpy generator) -> input``): the augmentation training applies
    (CIFAR-10's random crop and flip); certification never applies it."""
    name: str
    inputs: torch.Tensor
    labels: torch.Tensor
    class_names: List[str]
    mean: Optional[List[float]] = None  # per channel/feature, for the model's Normalize layer
    std: Optional[List[float]] = None
    extra: dict = field(default_factory=dict)
    augment: Optional[Callable] = None
    grid: Optional[float] = None  # the step of the grid the inputs lie on, when known (sound mode)

    in_memory = True

    def __post_init__(self):
        if self.inputs.shape[0] != self.labels.shape[0]:
            raise DatasetError(f"{self.name}: {self.inputs.shape[0]} inputs but {self.labels.shape[0]} labels")

    def __len__(self):
        return self.inputs.shape[0]

    def __getitem__(self, i: int):
        return self.inputs[i], int(self.labels[i])

    @property
    def classes(self) -> List[str]:
        return self.class_names

    def load(self, i: int, rng=None):
        """(input, label, info) of input ``i``; ``rng``: with ``augment`` applied. info: the input's sha256."""
        x = self.inputs[i]
        if rng is not None and self.augment is not None:
            x = self.augment(x, rng)
        return x, int(self.labels[i]), {"sha256": tensor_digest(self.inputs[i])}

    def take(self, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The inputs and labels at ``indices``."""
        indices = list(indices)
        return self.inputs[indices], self.labels[indices]

    def input_name(self, i: int) -> str:
        return f"input {i}"

    def input_digest(self, i: int) -> str:
        """sha256 of input ``i``'s values (what a certified row records)."""
        return tensor_digest(self.inputs[i])

    def describe(self) -> dict:
        return {"input_shape": list(self.input_shape)}

    def fingerprint(self) -> str:
        """sha256 of the inputs and labels (dtypes, shapes, values)."""
        return tensor_digest(self.inputs, self.labels)

    @property
    def num_classes(self) -> int:
        """len(class_names); 0 when unknown (a .pt file without class_names: the model decides)."""
        return len(self.class_names)

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self.inputs.shape[1:])

    def describe_input(self, index: int) -> str:
        """``input I of NAME``, with the input's row in the file when I counts within a split of a file
        (and the two differ)."""
        rows = self.extra.get("file_rows")
        where = (f" (row {rows[index]} of the file; indices count within its {self.extra.get('split')} split)"
                 if rows is not None and rows[index] != index else "")
        return f"input {index} of {self.name}{where}"


def _split(n_items: int, labels: np.ndarray, split: str, test_size=0.3, seed=0) -> np.ndarray:
    from sklearn.model_selection import train_test_split  # heavy: scikit-learn loads only for its datasets
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    train, test = train_test_split(np.arange(n_items), test_size=test_size, random_state=seed, stratify=labels)
    return np.sort(train if split == "train" else test)


def _channel_stats(x: torch.Tensor):
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dims).tolist(), x.std(dims).clamp_min(1e-6).tolist()


def load_digits(split: str = "test") -> Dataset:
    from sklearn.datasets import load_digits as sk_digits  # heavy: scikit-learn loads only for its datasets
    d = sk_digits()
    idx = _split(len(d.target), d.target, split)
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    train = x[_split(len(d.target), d.target, "train")]
    mean, std = _channel_stats(train)
    return Dataset("digits", x[idx], torch.tensor(d.target[idx], dtype=torch.int64), [str(i) for i in range(10)],
                   mean, std, grid=1 / 16)


def _standardised_table(name: str, bunch, split: str) -> Dataset:
    """A scikit-learn table as a Dataset: features standardised with the training split's mean and std."""
    train = _split(len(bunch.target), bunch.target, "train")
    idx = _split(len(bunch.target), bunch.target, split)
    mu, sd = bunch.data[train].mean(0), bunch.data[train].std(0)
    x = torch.tensor((bunch.data[idx] - mu) / sd, dtype=torch.float32)
    features = bunch.data.shape[1]
    return Dataset(name, x, torch.tensor(bunch.target[idx], dtype=torch.int64), [str(c) for c in bunch.target_names],
                   [0.0] * features, [1.0] * features)


def load_breast_cancer(split: str = "test") -> Dataset:
    from sklearn.datasets import load_breast_cancer as sk_bc  # heavy: scikit-learn loads only for its datasets
    return _standardised_table("breast_cancer", sk_bc(), split)


def load_wine(split: str = "test") -> Dataset:
    from sklearn.datasets import load_wine as sk_wine  # heavy: scikit-learn loads only for its datasets
    return _standardised_table("wine", sk_wine(), split)


CIFAR10_LAYOUT = ("a CIFAR-10 'python version' folder: ROOT/data_batch_1 .. data_batch_5, ROOT/test_batch "
                  "(pickled dicts with b'data' uint8 [N, 3072] and b'labels'), optional ROOT/batches.meta")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch (a dict of bytes, ints, lists and a uint8 numpy array) and nothing else:
    any other class or function the file names (e.g. ``os.system``) is refused, never imported or called."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode")}  # bytes in protocol-2 pickles written by Python 3 (text -> latin-1 bytes)

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never holds (refused: "
                                         f"unpickling it could run code)")
        return super().find_class(module, name)


def load_cifar10(root: str, split: str = "test") -> Dataset:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise DatasetError(f"CIFAR-10: {path} not found. Expected {CIFAR10_LAYOUT}")
        try:
            with open(path, "rb") as f:
                batch = _CifarUnpickler(f, encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except Exception as err:
            raise DatasetError(f"CIFAR-10: cannot read {path} ({err}). Expected {CIFAR10_LAYOUT}") from err
        xs.append(data)
        ys.append(labels)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    x = torch.from_numpy(np.concatenate(xs)).float().div(255)  # torchvision's ToTensor
    mean, std = NORMALIZATION["cifar10"]
    # Training: Cohen et al.'s RandomCrop(32, padding=4) and RandomHorizontalFlip; the test split is as read.
    return Dataset("cifar10", x, torch.from_numpy(np.concatenate(ys)), classes, list(mean), list(std),
                   augment=random_crop_flip if split == "train" else None)


MNIST_LAYOUT = ("an MNIST folder: ROOT/{train,t10k}-images-idx3-ubyte and ROOT/{train,t10k}-labels-idx1-ubyte "
                "(each optionally .gz)")


def _read_idx(path: str, magic: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    got, = struct.unpack(">I", data[:4])
    if got != magic:
        raise DatasetError(f"MNIST: {path} has magic number {got}, expected {magic}. Expected {MNIST_LAYOUT}")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"MNIST: {path} is truncated ({body.size} of {int(np.prod(dims))} bytes)")
    return body.reshape(dims)


def load_mnist(root: str, split: str = "test") -> Dataset:
    prefix = "train" if split == "train" else "t10k"
    found = {}
    for kind, magic in (("images-idx3-ubyte", 2051), ("labels-idx1-ubyte", 2049)):
        candidates = [os.path.join(root, f"{prefix}-{kind}{ext}") for ext in ("", ".gz")]
        path = next((p for p in candidates if os.path.isfile(p)), None)
        if path is None:
            raise DatasetError(f"MNIST: {candidates[0]} not found. Expected {MNIST_LAYOUT}")
        found[kind] = _read_idx(path, magic)
    images, labels = found["images-idx3-ubyte"], found["labels-idx1-ubyte"]
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"MNIST: {images.shape[0]} images but {labels.shape[0]} labels in {root}")
    x = torch.from_numpy(images.copy()).float().unsqueeze(1) / 255.0
    return Dataset("mnist", x, torch.from_numpy(labels.astype(np.int64)), [str(i) for i in range(10)],
                   [0.1307], [0.3081])


HAM10000_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
# Malignant or pre-malignant lesions: actinic keratoses / intraepithelial carcinoma, basal cell
# carcinoma, melanoma. The others (benign keratosis, dermatofibroma, naevi, vascular) are benign.
HAM10000_MALIGNANT = ["akiec", "bcc", "mel"]
HAM10000_LAYOUT = ("a HAM10000 folder: ROOT/HAM10000_metadata.csv (columns image_id and dx, dx one of "
                   f"{', '.join(HAM10000_CLASSES)}) and the images ROOT/**/<image_id>.jpg (any subfolder)")


def ham10000_cost_matrix():
    """The medical cost matrix for HAM10000: a malignant lesion (akiec, bcc, mel) predicted as any
    benign class (bkl, df, nv, vasc) is harmful; confusions within either group are not."""
    benign = [HAM10000_CLASSES.index(c) for c in HAM10000_CLASSES if c not in HAM10000_MALIGNANT]
    return CostMatrix.pairwise(len(HAM10000_CLASSES), {HAM10000_CLASSES.index(m): benign for m in HAM10000_MALIGNANT},
                               class_names=list(HAM10000_CLASSES))


def load_ham10000(root: str, split: str = "test", size: int = 64, resize: str = "stretch",
                  shorter: Optional[int] = None) -> ImageFiles:
    """HAM10000 dermoscopy images, decoded when read, ``size`` x ``size`` by the ``resize`` policy
    (``ImageTransform``); 7 classes (``HAM10000_CLASSES``).

    ``extra["malignant_classes"]`` lists the malignant classes (``HAM10000_MALIGNANT``): the cost
    matrix ``CostMatrix.pairwise(7, {m: benign for m in malignant})`` marks malignant -> benign as
    harmful. Fixed stratified split by image: 30% test, ``random_state=0``.
    """
    transform = ImageTransform(size, resize, shorter)
    meta = os.path.join(root, "HAM10000_metadata.csv")
    if not os.path.isfile(meta):
        raise DatasetError(f"HAM10000: {meta} not found. Expected {HAM10000_LAYOUT}")
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image_id", "dx"} <= set(rows[0]):
        raise DatasetError(f"HAM10000: {meta} lacks the columns image_id and dx. Expected {HAM10000_LAYOUT}")
    images = {os.path.splitext(os.path.basename(p))[0]: p
              for p in sorted(glob.glob(os.path.join(root, "**", "*.jpg"), recursive=True))}
    labels = []
    for row in rows:
        if row["dx"] not in HAM10000_CLASSES:
            raise DatasetError(f"HAM10000: unknown dx {row['dx']!r} for {row['image_id']}. Expected {HAM10000_LAYOUT}")
        if row["image_id"] not in images:
            raise DatasetError(f"HAM10000: image {row['image_id']}.jpg not found under {root}. "
                               f"Expected {HAM10000_LAYOUT}")
        labels.append(HAM10000_CLASSES.index(row["dx"]))
    labels = np.array(labels)
    idx = _split(len(rows), labels, split) if len(rows) >= 10 else np.arange(len(rows))
    paths = [images[rows[i]["image_id"]] for i in idx]
    return ImageFiles("ham10000", root, [os.path.relpath(p, root) for p in paths], labels[idx].tolist(),
                      list(HAM10000_CLASSES), transform, [os.stat(p).st_size for p in paths],
                      [0.7635, 0.5461, 0.5705], [0.1409, 0.1526, 0.1700],
                      extra={"malignant_classes": [HAM10000_CLASSES.index(c) for c in HAM10000_MALIGNANT]})


PT_LAYOUT = ("a torch.save'd dict {'inputs': float tensor [N, ...], 'labels': int tensor [N], optional "
             "'class_names': list of names, optional 'split': one 'train'/'test' string per input (or a bool/int "
             "tensor [N], 1 = test)}")


def _load_pt(path: str, split: str = "all") -> Dataset:
    check_split(split)
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # neither torch.save's zip archive nor its legacy pickle
        raise DatasetError(f"{path} is not a file written by torch.save (neither a zip archive nor a pickle); "
                           f"expected {PT_LAYOUT}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DatasetError(f"cannot read dataset file {path} ({' '.join(str(err).split())[:200]}). Expected "
                           f"{PT_LAYOUT}") from None
    if not isinstance(obj, dict) or "inputs" not in obj or "labels" not in obj:
        raise DatasetError(f"{path} must hold {PT_LAYOUT}")
    inputs, labels = obj["inputs"], obj["labels"]
    if not torch.is_tensor(inputs) or not torch.is_floating_point(inputs):
        raise DatasetError(f"{path}: 'inputs' must be a float tensor")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != inputs.shape[0] or torch.is_floating_point(labels):
        raise DatasetError(f"{path}: 'labels' must be an integer tensor [N] with N = {inputs.shape[0]} (one per input), "
                           f"got {labels.dtype} {list(labels.shape)}")
    labels = labels.long()
    if labels.numel() and int(labels.min()) < 0:
        raise DatasetError(f"{path}: labels must be class indices >= 0, got {int(labels.min())}")
    names = obj.get("class_names")
    if names is not None and labels.numel() and int(labels.max()) >= len(names):
        raise DatasetError(f"{path}: label {int(labels.max())} but only {len(names)} class_names")
    if split != "all":
        if "split" not in obj:
            raise DatasetError(f"{path} has no 'split' entry, so it has no {split} split: add one (see the README), "
                               f"or pass --split all to use every input")
        marks = obj["split"]
        if torch.is_tensor(marks):
            test = marks.reshape(-1).bool()
        else:
            marks = list(marks)
            if not set(marks) <= {"train", "test"}:
                raise DatasetError(f"{path}: 'split' must hold 'train' or 'test' per input, got {sorted(set(marks))[:5]}")
            test = torch.tensor([m == "test" for m in marks], dtype=torch.bool)
        if test.shape[0] != inputs.shape[0]:
            raise DatasetError(f"{path}: 'split' has {test.shape[0]} entries for {inputs.shape[0]} inputs")
        keep = test if split == "test" else ~test
        inputs, labels = inputs[keep], labels[keep]
        # Indices (idx, errors) count within the split, as Cohen et al.'s idx counts within a dataset's
        # test set; file_rows maps each to its row in the file (recorded in a run's metadata).
        extra = {"split": split, "file_rows": keep.nonzero().flatten().tolist()}
    else:
        extra = {}
    # Without class_names the class count is unknown (it comes from the model): a file may hold a
    # subset of the classes.
    return Dataset(os.path.basename(path), inputs.float(), labels, list(names) if names is not None else [],
                   extra=extra)


DATASET_NAMES = ("digits, breast_cancer, wine, imagenet:ROOT, cifar10:ROOT, mnist:ROOT, ham10000:ROOT, folder:ROOT, or a .pt "
                 "file")


def parse_resize(text: Optional[str]) -> Tuple[str, Optional[int]]:
    """``--resize``: stretch, exact, crop, or crop:S (resize the shorter side to S, then crop the image
    size) -> (policy, S or None)."""
    policy, _, shorter = (text or "stretch").partition(":")
    if policy not in RESIZE_POLICIES or (shorter and (policy != "crop" or not shorter.isdigit())):
        raise DatasetError(f"--resize {text}: use stretch, crop, crop:S (shorter side to S, then the centre crop) or "
                           f"exact")
    return policy, int(shorter) if shorter else None


def load_dataset(spec: str, split: str = "test", image_size: Optional[int] = None,
                 resize: Optional[str] = None):
    """``digits``, ``breast_cancer``, ``wine``, ``imagenet:ROOT``, ``cifar10:ROOT``, ``mnist:ROOT``, ``ham10000:ROOT``,
    ``folder:ROOT`` or a .pt file.

    ``split``: train, test, or all (every input; only for ``folder:`` and ``.pt`` datasets, whose split
    is optional — asking a split of one that has none is refused). ``imagenet``'s test split is ROOT/val.
    ``image_size`` and ``resize`` (``parse_resize``): the input size and resize policy of ``folder:``
    (default 32, stretch) and ``ham10000:`` (default 64, stretch) datasets.
    """
    name, _, root = spec.partition(":")
    check_split(split)
    if (image_size is not None or resize is not None) and name not in ("folder", "ham10000"):
        flag = "--image-size" if image_size is not None else "--resize"
        raise DatasetError(f"{flag} is for folder: and ham10000: datasets; {spec} has its own fixed input size")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DatasetError(f"--image-size must be an integer >= 1, got {image_size!r}")
    policy, shorter = parse_resize(resize)
    size = image_size or (64 if name == "ham10000" else 32)
    if shorter is not None and shorter < size:
        raise DatasetError(f"--resize {resize}: the shorter side before the crop must be at least the image size {size}")
    if spec.endswith(".pt"):
        if not os.path.isfile(spec):
            raise DatasetError(f"dataset file not found: {spec}")
        return _load_pt(spec, split)
    if split == "all" and name not in ("folder",):
        raise DatasetError(f"--split all is for folder: and .pt datasets; {name} has fixed train and test splits")
    if name == "digits":
        return load_digits(split)
    if name == "breast_cancer":
        return load_breast_cancer(split)
    if name == "wine":
        return load_wine(split)
    if name == "imagenet" and root:
        return load_imagenet(root, split, NORMALIZATION["imagenet"])
    loaders = {"cifar10": load_cifar10, "mnist": load_mnist}
    if name in loaders and root:
        return loaders[name](root, split)
    if name == "ham10000" and root:
        return load_ham10000(root, split, size, policy, shorter)
    if name == "folder" and root:
        return load_image_folder(root, split, size, policy, shorter)
    raise DatasetError(f"unknown dataset {spec!r}: use digits, breast_cancer, wine, imagenet:ROOT, cifar10:ROOT, mnist:ROOT, "
                       f"ham10000:ROOT, folder:ROOT, or a .pt file with {{'inputs', 'labels'}}")
