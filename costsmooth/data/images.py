"""Image datasets decoded lazily from files: ImageNet, image folders, HAM10000.

Each is an ``ImageFiles``: a ``torch.utils.data.Dataset`` (``len(ds)``, ``ds[i] -> (x, label)``,
``ds.classes``) that holds only the file list and labels; an image is read and decoded when it is
asked for, so a 50,000-image validation set costs a few MB of memory, not 30 GB.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .base import DatasetError, check_split
from .transforms import ImageTransform, RandomResizedCropFlip

__all__ = ["ImageFiles", "list_image_folder", "load_imagenet", "load_image_folder", "TORCHVISION_EXTENSIONS",
           "IMAGE_EXTENSIONS", "IMAGENET_LAYOUT", "FOLDER_LAYOUT"]

# torchvision's ImageFolder extensions (checked on the lower-cased name), so that imagenet:ROOT lists
# exactly the files, in the order, that torchvision's ImageFolder lists.
TORCHVISION_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGE_EXTENSIONS = TORCHVISION_EXTENSIONS + (".gif",)  # folder:ROOT also takes GIFs

IMAGENET_LAYOUT = ("an ImageNet folder: ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (the validation images "
                   "sorted into one folder per class, as torchvision's ImageFolder reads them)")
FOLDER_LAYOUT = ("ROOT/train/<class name>/<image> and ROOT/test/<class name>/<image> (png, jpg, ...), or "
                 "ROOT/<class name>/<image> with --split all")


class ImageFiles(torch.utils.data.Dataset):
    """Images read from files when asked for: ``ds[i] -> (float32 [3, S, S] in [0, 1], label)``.

    ``files`` are paths relative to ``root``, ``sizes`` their byte sizes when listed. ``transform``
    (an ``ImageTransform``) makes the input; ``train_transform`` (called with a NumPy generator) is the
    augmentation that training uses instead (``load(i, rng)``); certification never uses it.
    ``mean``/``std``: per-channel statistics when they are known without reading the data (a preset),
    else None (training computes them in one pass, ``loading.channel_stats``).
    """

    in_memory = False

    def __init__(self, name: str, root: str, files: Sequence[str], labels: Sequence[int], class_names: List[str],
                 transform: ImageTransform, sizes: Sequence[int], mean=None, std=None, extra: Optional[dict] = None,
                 train_transform: Optional[Callable] = None):
        self.name, self.root, self.files = name, root, list(files)
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        self.sizes = list(sizes)
        self.class_names = list(class_names)
        self.transform, self.train_transform = transform, train_transform
        self.mean = None if mean is None else list(mean)
        self.std = None if std is None else list(std)
        self.extra = dict(extra or {})
        self.augment = train_transform  # what training applies (None: the test transform)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def classes(self) -> List[str]:
        return self.class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return (3, self.transform.size, self.transform.size)

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.files[i])

    def input_name(self, i: int) -> str:
        """The file of input ``i``, relative to the dataset root."""
        return self.files[i]

    def load(self, i: int, rng: Optional[np.random.Generator] = None):
        """(input, label, info) of input ``i``: the file is read once; info holds the sha256 of its bytes
        and the conversion flags (``transforms.CONVERTED_*``). ``rng``: apply ``train_transform``."""
        from PIL import Image  # optional: Pillow, needed only for image files

        path = self.path(i)
        try:
            with open(path, "rb") as f:
                data = f.read()
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                x, flags = (self.train_transform(img, rng) if rng is not None and self.train_transform is not None
                            else self.transform(img))
        except Exception as err:  # noqa: BLE001 -- PIL reports broken files with many error types
            raise DatasetError(f"cannot read image {path} ({' '.join(str(err).split()) or type(err).__name__}); "
                               f"replace or remove the file") from None
        return x, int(self.labels[i]), {"sha256": hashlib.sha256(data).hexdigest(), "converted": flags}

    def __getitem__(self, i: int):
        x, y, _ = self.load(i)
        return x, y

    def take(self, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The inputs and labels at ``indices``, decoded now (for commands that need a few in memory)."""
        indices = list(indices)
        if not indices:
            return torch.zeros((0,) + self.input_shape), torch.zeros(0, dtype=torch.int64)
        return torch.stack([self.load(i)[0] for i in indices]), self.labels[indices]

    def input_digest(self, i: int) -> str:
        """sha256 of input ``i``'s file (what a certified row records)."""
        h = hashlib.sha256()
        try:
            with open(self.path(i), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError as err:
            raise DatasetError(f"cannot read image {self.path(i)} ({err.strerror or err})") from None
        return h.hexdigest()

    def describe(self) -> dict:
        """Size and channel handling, for summaries and metadata."""
        out = dict(self.transform.describe())
        if self.train_transform is not None:
            out["train_augmentation"] = self.train_transform.describe()
        return out

    def fingerprint(self) -> str:
        """sha256 of the file list (relative paths, byte sizes, labels), the class names and the transform:
        it costs a listing, not a read of every image. Each certified row also records its file's sha256."""
        h = hashlib.sha256(json.dumps({"classes": self.class_names, "transform": self.transform.describe()}).encode())
        for rel, size, label in zip(self.files, self.sizes, self.labels.tolist()):
            h.update(f"{rel}\t{size}\t{label}\n".encode())
        return h.hexdigest()


def list_image_folder(folder: str, extensions=TORCHVISION_EXTENSIONS, layout: str = FOLDER_LAYOUT,
                      allow_empty: bool = False):
    """(relative files, labels, byte sizes, class names) as torchvision's ``ImageFolder`` lists them: classes
    are the sorted sub-folder names; within a class, ``sorted(os.walk(...))`` and sorted file names.

    Sub-folders of a class folder count (any depth). A class folder without images is refused, as
    ImageFolder refuses it, unless ``allow_empty`` (then only a folder without any image is refused)."""
    if not os.path.isdir(folder):
        raise DatasetError(f"{folder} not found. Expected {layout}")
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise DatasetError(f"no images found in {folder}: it has no class folders. Expected {layout}")
    files, labels, sizes = [], [], []
    for c, name in enumerate(classes):
        start = len(files)
        for dirpath, _, names in sorted(os.walk(os.path.join(folder, name), followlinks=True)):
            for fname in sorted(names):
                if fname.lower().endswith(extensions):
                    path = os.path.join(dirpath, fname)
                    files.append(os.path.relpath(path, folder))
                    labels.append(c)
                    sizes.append(os.stat(path).st_size)
        if len(files) == start and not allow_empty:
            raise DatasetError(f"class folder {os.path.join(folder, name)} holds no images ({', '.join(extensions)}). "
                               f"Expected {layout}")
    if not files:
        raise DatasetError(f"no images found in {folder} ({', '.join(extensions)}). Expected {layout}")
    return files, labels, sizes, classes


def load_imagenet(root: str, split: str = "test", normalization=None) -> ImageFiles:
    """ImageNet as Cohen et al. prepare it: ``ROOT/val`` for the test split (resize the shorter side to
    256, centre crop 224), ``ROOT/train`` for training (random resized crop 224 and horizontal flip);
    classes are the sorted folder names (wnids), labels in torchvision ``ImageFolder`` order.

    Certifying reads only ``ROOT/val``: the model carries its normalisation. ``normalization``: the
    (mean, std) recorded on the dataset for training (Cohen et al.'s ImageNet constants)."""
    check_split(split)
    if split == "all":
        raise DatasetError("imagenet has fixed train and val splits; --split all is for folder: and .pt datasets")
    folder = os.path.join(root, "train" if split == "train" else "val")
    if not os.path.isdir(folder):
        raise DatasetError(f"ImageNet: {folder} not found. Expected {IMAGENET_LAYOUT}")
    files, labels, sizes, classes = list_image_folder(folder, TORCHVISION_EXTENSIONS, IMAGENET_LAYOUT)
    mean, std = normalization or (None, None)
    return ImageFiles("imagenet", folder, files, labels, classes, ImageTransform(224, "crop", 256), sizes, mean, std,
                      train_transform=RandomResizedCropFlip(224) if split == "train" else None)


def load_image_folder(root: str, split: str = "test", size: int = 32, resize: str = "stretch",
                      shorter: Optional[int] = None) -> ImageFiles:
    """Images under ``root/<split>/<class name>/`` (``split`` = train or test) or, for ``split="all"``,
    ``root/<class name>/``; classes sorted by name (torchvision ``ImageFolder`` order); RGB (greyscale,
    palette and RGBA images converted); ``size`` x ``size`` by the ``resize`` policy (stretch, crop or
    exact: ``transforms.ImageTransform``).

    A folder without ``train``/``test`` subfolders has no split: asking for one is refused
    (``split="all"`` uses every image, e.g. for a held-out folder that was never trained on).
    Normalisation statistics are not read here: training computes them from its images.
    """
    check_split(split)
    transform = ImageTransform(size, resize, shorter)
    if not os.path.isdir(root):
        raise DatasetError(f"image folder {root} not found. Expected {FOLDER_LAYOUT}")
    has_split = all(os.path.isdir(os.path.join(root, s)) for s in ("train", "test"))
    if split == "all":
        folder = root
    elif has_split:
        folder = os.path.join(root, split)
    else:
        raise DatasetError(f"image folder {root} has no {split} split (no {root}/train and {root}/test folders): "
                           f"add them, or pass --split all to use every image in {root}")
    files, labels, sizes, classes = list_image_folder(folder, IMAGE_EXTENSIONS, FOLDER_LAYOUT, allow_empty=True)
    if has_split and split != "all":
        other = os.path.join(root, "test" if split == "train" else "train")
        other_classes = sorted(e.name for e in os.scandir(other) if e.is_dir())
        if other_classes != classes:
            raise DatasetError(f"{root}/train and {root}/test must hold the same class folders; got "
                               f"{classes if split == 'train' else other_classes} and "
                               f"{other_classes if split == 'train' else classes}")
    return ImageFiles(os.path.basename(os.path.normpath(root)), folder, files, labels, classes, transform, sizes)
