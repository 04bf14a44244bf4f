"""ImageNet validation images as the paper's ImageNet rows read them.

Follows the robustml ImageNet provider (robust-ml/robustml, ``robustml/provider.py``,
``ImageNet._load_image``) that the authors' ``robustml_attack.py`` scripts used: the files of
the validation folder sorted by name, each label looked up by file name in a ``val.txt``-style
file ("filename label" per line), each image centre-cropped to a square (the crop keeps the
full short side; the offset is ``(long - short) // 2``) and resized to ``size``×``size`` with
PIL. robustml resized with PIL's default filter, which was NEAREST when the paper was written
(Pillow < 7) and is BICUBIC since Pillow 7.0; ``resample`` picks one explicitly.
Greyscale, palette and CMYK images are converted to RGB (robustml repeated greyscale and
dropped an alpha channel; it had no case for CMYK).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from obfgrad._checks import check_choice, check_int

PathLike = Union[str, Path]
_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp"}
#: ILSVRC-2012 classes: labels are 0..999 (robustml's val.txt).
NUM_CLASSES = 1000


def _pil():
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - Pillow is installed where tests run
        raise ImportError(
            "load_imagenet_val needs Pillow to decode images: pip install pillow "
            "(or pip install 'obfgrad[bench]')"
        ) from error
    return Image


def read_labels_file(labels_file: PathLike) -> Dict[str, int]:
    """``{"ILSVRC2012_val_00000001.JPEG": 65, ...}`` from lines "filename label".

    Only the file's base name is kept, as robustml does, so lines may carry a folder prefix.
    """
    labels: Dict[str, int] = {}
    for number, line in enumerate(Path(labels_file).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{labels_file}:{number}: expected 'filename label', got {line!r}")
        try:
            label = int(fields[1])
        except ValueError:
            raise ValueError(f"{labels_file}:{number}: label {fields[1]!r} is not an integer") from None
        if not 0 <= label < NUM_CLASSES:  # e.g. a 1-based file: every label would be off by one
            raise ValueError(f"{labels_file}:{number}: label {label} outside 0..{NUM_CLASSES - 1}")
        name = os.path.basename(fields[0])
        if labels.get(name, label) != label:
            raise ValueError(f"{labels_file}:{number}: {name} is listed again with another label")
        labels[name] = label
    return labels


def centre_crop_box(width: int, height: int) -> Tuple[int, int, int, int]:
    """(left, upper, right, lower) of the centred square crop robustml takes (aspect 1)."""
    if width > height:
        offset = (width - height) // 2
        return offset, 0, offset + height, height
    offset = (height - width) // 2
    return 0, offset, width, offset + width


def load_image(path: PathLike, size: int = 299, resample: str = "bicubic") -> np.ndarray:
    """One image -> float32 array 3×size×size in [0, 1] (centre square crop, then resize)."""
    Image = _pil()
    filters = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "lanczos": Image.LANCZOS}
    try:
        with Image.open(path) as image:
            image = image.crop(centre_crop_box(image.width, image.height))
            image = image.convert("RGB").resize((size, size), filters[resample])
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as error:  # unreadable, truncated, not an image (PIL)
        raise ValueError(f"{path}: cannot read the image ({type(error).__name__}: {error})") from None
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def list_images(root: PathLike) -> List[Path]:
    """Image files directly inside ``root`` (or ``root/val`` when that exists), sorted by name."""
    root = Path(root)
    folder = root / "val" if (root / "val").is_dir() else root
    if not folder.is_dir():
        raise FileNotFoundError(f"root: no directory {folder}")
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES),
                  key=lambda p: p.name)


def load_imagenet_val(
    root: PathLike,
    labels_file: Optional[PathLike] = None,
    limit: Optional[int] = None,
    size: int = 299,
    *,
    resample: str = "bicubic",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` validation images (sorted by file name) and their labels.

    Args:
        root: the validation folder, or a folder holding ``val/`` (robustml's layout).
        labels_file: "filename label" lines; default ``root/val.txt``.
        limit: how many images (all when None).
        size: output side in pixels (299 for InceptionV3).
        resample: PIL filter: "nearest" (PIL's default in 2018), "bilinear", "bicubic"
            (PIL's default now), or "lanczos".

    Returns:
        images float32 N×3×size×size in [0, 1], labels int64 N.

    Example (one 400×300 image in robustml's layout, ``root/val/`` and ``root/val.txt``):
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "val").mkdir()
        >>> Image.new("RGB", (400, 300), (255, 0, 0)).save(root / "val" / "ILSVRC2012_val_00000001.JPEG")
        >>> _ = (root / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG 65")
        >>> images, labels = load_imagenet_val(root, limit=10)
        >>> images.shape, labels.tolist()
        (torch.Size([1, 3, 299, 299]), [65])
    """
    check_int(size, "size", low=1)
    check_choice(resample, "resample", ("nearest", "bilinear", "bicubic", "lanczos"))
    if limit is not None:
        check_int(limit, "limit", low=0)
    labels_path = Path(labels_file) if labels_file is not None else Path(root) / "val.txt"
    if not labels_path.is_file():
        raise FileNotFoundError(f"labels_file: no file {labels_path} (lines 'filename label')")
    labels_by_name = read_labels_file(labels_path)
    paths = list_images(root)
    if not paths:
        raise FileNotFoundError(f"root: no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) in {root}")
    if limit is not None:
        paths = paths[:limit]
    unlabeled = [p.name for p in paths if p.name not in labels_by_name]
    if unlabeled:
        raise ValueError(f"labels_file: no label for {len(unlabeled)} image(s), e.g. {unlabeled[0]!r}")
    images = torch.empty((len(paths), 3, size, size), dtype=torch.float32)
    for index, path in enumerate(paths):
        images[index] = torch.from_numpy(load_image(path, size, resample))
    labels = torch.tensor([labels_by_name[p.name] for p in paths], dtype=torch.int64)
    return images, labels
