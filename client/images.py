"""Image folders: one sub-folder per class, PNG or JPEG files inside (read with Pillow).

    data/
      cat/  001.png  002.jpg ...
      dog/  001.png ...

Classes are the sub-folder names in sorted order (label 0 is the first); hidden entries
are skipped. Pixels are scaled to [0, 1] float32, shape (n, height, width, channels):
1 channel when every image is greyscale, else 3 (RGB; alpha dropped). Every image must
have the same size unless `size=(width, height)` resizes them all. Pillow is the reader
(matplotlib, installed with the client, depends on it, so it is always there with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from client.data import Dataset
from fedasync.core.errors import SchemaError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - matplotlib brings Pillow
        raise ImportError("reading image folders needs Pillow: pip install pillow") from exc
    return Image


def load_image_folder(root: str | Path, *, size: tuple[int, int] | None = None) -> Dataset:
    """Every image under `root/<class>/`, labelled by its class folder's sorted index."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SchemaError(f"image folder {str(root)!r} has no class sub-folders")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = sorted(
            p
            for p in (root / name).iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not found:
            raise SchemaError(
                f"image folder {str(root)!r}: class {name!r} holds no "
                f"{'/'.join(IMAGE_SUFFIXES)} files"
            )
        files += [(p, label) for p in found]
    images = [_read(path, size) for path, _ in files]
    _same_size(images, [p for p, _ in files], root)
    grey = all(img.mode in ("1", "L", "LA") for img in images)
    pixels = np.stack([_pixels(img, grey) for img in images])
    labels = np.array([label for _, label in files], dtype=np.int64)
    return Dataset(pixels, labels, f"image folder {str(root)!r}", tuple(classes))


def _read(path: Path, size: tuple[int, int] | None) -> Any:
    image_module = _pillow()
    try:
        with image_module.open(path) as img:
            img.load()
            return img.resize(size) if size is not None else img.copy()
    except (OSError, image_module.UnidentifiedImageError) as exc:
        raise SchemaError(f"image {str(path)!r} is not a readable PNG/JPEG: {exc}") from None


def _same_size(images: list[Any], paths: list[Path], root: Path) -> None:
    first = images[0].size
    for img, path in zip(images, paths, strict=True):
        if img.size != first:
            raise SchemaError(
                f"image folder {str(root)!r}: {str(path)!r} is {img.size[0]}x{img.size[1]}, "
                f"{str(paths[0])!r} is {first[0]}x{first[1]}; every image needs one size "
                "(or pass size=(width, height) to resize)"
            )


def _pixels(img: Any, grey: bool) -> npt.NDArray[np.float32]:
    if grey:
        return (np.asarray(img.convert("L"), dtype=np.float32) / np.float32(255.0))[..., None]
    return np.asarray(img.convert("RGB"), dtype=np.float32) / np.float32(255.0)
