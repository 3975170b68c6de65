"""Image transforms with Pillow alone, equal bit for bit to torchvision's where they share a name.

Cohen et al.'s test transform for ImageNet is torchvision's ``Resize(256)``, ``CenterCrop(224)``,
``ToTensor()``; ``resize_shorter``, ``center_crop_box`` and ``to_tensor`` reproduce its arithmetic:

- ``Resize(s)`` with one number scales the shorter side to ``s`` and the longer side to
  ``int(s * long / short)`` (truncated), with PIL's bilinear filter; an image already that size is
  returned as it is.
- ``CenterCrop(c)`` cuts at ``top = round((H - c) / 2)``, ``left = round((W - c) / 2)`` with Python's
  ``round`` (halves to even: 36.5 -> 36, 37.5 -> 38).
- ``ToTensor()`` is ``uint8 [H, W, C] -> float32 [C, H, W]``, then ``.div(255)``.

Training augmentations (random resized crop, random crop with padding, horizontal flip) follow
torchvision's algorithms with a NumPy generator, so a training run's augmentation depends on
(seed, epoch, index) only, whichever worker process decodes the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["resize_shorter", "center_crop_box", "to_tensor", "ImageTransform", "random_resized_crop_box",
           "RandomResizedCropFlip", "random_crop_flip", "RESIZE_POLICIES", "CONVERTED_CHANNELS", "CONVERTED_SIZE"]

# Bits of the conversion flags returned by ImageTransform: which changes an image needed.
CONVERTED_CHANNELS = 1  # greyscale, palette, RGBA, CMYK ... converted to RGB
CONVERTED_SIZE = 2  # resized from another size (beyond what the policy's crop does)

RESIZE_POLICIES = ("stretch", "crop", "exact")


def resize_shorter(width: int, height: int, size: int) -> Tuple[int, int]:
    """(new width, new height) of torchvision's ``Resize(size)``: the shorter side becomes ``size``, the
    longer ``int(size * long / short)``."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_box(width: int, height: int, crop_w: int, crop_h: int) -> Tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's ``CenterCrop((crop_h, crop_w))`` on a ``width`` x
    ``height`` image no smaller than the crop; offsets rounded half to even as Python's ``round``."""
    if crop_w > width or crop_h > height:
        raise ValueError(f"a {crop_w}x{crop_h} centre crop does not fit a {width}x{height} image")
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return left, top, left + crop_w, top + crop_h


def to_tensor(img) -> torch.Tensor:
    """An RGB PIL image as float32 ``[3, H, W]`` in [0, 1]: torchvision's ``ToTensor`` (uint8, then ``div(255)``)."""
    array = np.array(img, np.uint8, copy=True)
    return torch.from_numpy(array).view(img.size[1], img.size[0], -1).permute(2, 0, 1).contiguous().float().div(255)


def _rgb(img):
    """(RGB image, flags): torchvision's ImageFolder loader converts every image to RGB the same way."""
    if img.mode == "RGB":
        return img, 0
    return img.convert("RGB"), CONVERTED_CHANNELS


def _bilinear():
    from PIL import Image  # optional: Pillow, needed only for image files
    return Image.BILINEAR


@dataclass(frozen=True)
class ImageTransform:
    """Decoded image -> RGB float32 ``[3, size, size]`` in [0, 1], and flags of the conversions made.

    ``resize``:
    - ``stretch``: resize to ``size`` x ``size`` (PIL bilinear), whatever the aspect ratio;
    - ``crop``: resize the shorter side to ``shorter`` (default ``size``), then cut the centre
      ``size`` x ``size`` (``shorter=256, size=224`` is Cohen et al.'s ImageNet test transform);
    - ``exact``: take images that are ``size`` x ``size`` already, refuse any other size.
    """
    size: int
    resize: str = "stretch"
    shorter: Optional[int] = None

    def __post_init__(self):
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"unknown resize policy {self.resize!r}; choose one of {', '.join(RESIZE_POLICIES)}")
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"the image size must be an integer >= 1, got {self.size!r}")
        if self.shorter is not None and (self.resize != "crop" or self.shorter < self.size):
            raise ValueError(f"a shorter side of {self.shorter} before the crop needs --resize crop and a value >= "
                             f"the image size {self.size}")

    def describe(self) -> dict:
        """The size and the channel handling, for summaries and metadata."""
        how = {"stretch": f"resized to {self.size}x{self.size} (bilinear, aspect ratio not kept)",
               "crop": f"shorter side resized to {self.shorter or self.size} (bilinear), centre {self.size}x{self.size} "
                       f"cut out",
               "exact": f"{self.size}x{self.size} required, never resized"}[self.resize]
        return {"input_shape": [3, self.size, self.size], "resize": how,
                "channels": "RGB; greyscale, palette and RGBA images converted to RGB (alpha dropped)"}

    def geometry(self, img):
        """(image at the output size, flags): the resize policy on an RGB PIL image."""
        w, h = img.size
        flags = CONVERTED_SIZE if (w, h) != (self.size, self.size) else 0  # resampled from another size
        if self.resize == "exact":
            if flags:
                raise ValueError(f"the image is {w}x{h}, not {self.size}x{self.size} (--resize exact); use --resize "
                                 f"stretch or crop to resize it")
            return img, 0
        if self.resize == "stretch":
            return (img.resize((self.size, self.size), _bilinear()) if flags else img), flags
        new_w, new_h = resize_shorter(w, h, self.shorter or self.size)
        if (new_w, new_h) != (w, h):  # torchvision's Resize returns an image of the asked size as it is
            img = img.resize((new_w, new_h), _bilinear())
        return img.crop(center_crop_box(new_w, new_h, self.size, self.size)), flags

    def __call__(self, img) -> Tuple[torch.Tensor, int]:
        img, flags = _rgb(img)
        img, more = self.geometry(img)
        return to_tensor(img), flags | more


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0),
                            ratio=(3.0 / 4.0, 4.0 / 3.0)) -> Tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's ``RandomResizedCrop`` box: up to 10 tries of a random
    area share in ``scale`` and log-uniform aspect ratio in ``ratio``, else the centre crop of the
    clamped aspect ratio."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


@dataclass(frozen=True)
class RandomResizedCropFlip:
    """Cohen et al.'s ImageNet training transform: ``RandomResizedCrop(size)`` (PIL bilinear) and
    ``RandomHorizontalFlip()``, drawn from ``rng``."""
    size: int = 224

    def describe(self) -> str:
        return f"random resized crop to {self.size}x{self.size} (area 8-100%, aspect 3/4-4/3), horizontal flip"

    def __call__(self, img, rng: np.random.Generator) -> Tuple[torch.Tensor, int]:
        from PIL import Image  # optional: Pillow, needed only for image files
        img, flags = _rgb(img)
        box = random_resized_crop_box(img.size[0], img.size[1], rng)
        img = img.crop(box).resize((self.size, self.size), _bilinear())
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img), flags


def random_crop_flip(x: torch.Tensor, rng: np.random.Generator, padding: int = 4) -> torch.Tensor:
    """Cohen et al.'s CIFAR-10 training transform on one ``[C, H, W]`` input: ``RandomCrop(H, padding)``
    (zero padding) and ``RandomHorizontalFlip()``."""
    c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    top, left = int(rng.integers(0, 2 * padding + 1)), int(rng.integers(0, 2 * padding + 1))
    out = padded[:, top:top + h, left:left + w]
    if rng.random() < 0.5:
        out = out.flip(-1)
    return out.contiguous()
