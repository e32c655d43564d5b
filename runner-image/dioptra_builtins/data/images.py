"""Image folder plugins: make, resize, rotate and describe PNG/JPEG files with Pillow.

Tasks pass image folders to each other as plain path strings, so every step's output is
small, JSON-serialisable and can be inspected on disk. When a task is not told where to
write, it creates a fresh temporary folder (``tempfile.mkdtemp``): the input folder may be
read-only (a mounted volume, a read-only root filesystem in a pod), while the temporary
folder is writable both on a laptop and in the runner's pod, where ``/tmp`` is an emptyDir
that disappears with the pod.
"""

import os
import tempfile
from collections.abc import Sequence
from numbers import Integral
from pathlib import Path

import numpy as np
from dioptra import pyplugs
from PIL import Image, ImageDraw

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

ImageSource = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


@pyplugs.register
def make_sample_images(
    output_dir: str | None = None,
    count: int = 4,
    size: Sequence[int] = (64, 48),
    seed: int = 0,
) -> str:
    """Draw a few small synthetic images so that image flows run anywhere without data.

    Alternates PNG and JPEG files so that both formats are exercised. Shapes and colours
    come from ``seed``, so the same arguments always produce the same pictures.

    Returns the folder holding the images (a new temporary folder when ``output_dir`` is
    not given).
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    width, height = _image_size(size, "size")
    folder = _output_folder(output_dir, "dioptra-samples-")
    rng = np.random.default_rng(seed)
    for index in range(count):
        background = tuple(int(c) for c in rng.integers(0, 256, size=3))
        image = Image.new("RGB", (width, height), background)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, x1 = sorted(int(v) for v in rng.integers(0, width, size=2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, height, size=2))
            fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
            draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=fill)
        suffix = ".png" if index % 2 == 0 else ".jpg"
        image.save(folder / f"sample-{index:03d}{suffix}")
    return str(folder)


@pyplugs.register
def resize(data_dir: str, image_size: Sequence[int], output_dir: str | None = None) -> str:
    """Resize every PNG/JPEG image in a folder to ``image_size`` (a ``[width, height]`` pair).

    Files keep their names and formats. Returns the folder holding the resized images, which
    ``rotate`` (or any task taking ``data``) accepts; a new temporary folder when
    ``output_dir`` is not given.
    """
    width, height = _image_size(image_size, "image_size")
    folder = _output_folder(output_dir, "dioptra-resized-")
    for path in _image_files(data_dir):
        with Image.open(path) as image:
            resized = image.resize((width, height), Image.Resampling.LANCZOS)
            resized.save(folder / path.name, format=image.format)
    return str(folder)


@pyplugs.register
def rotate(
    data: ImageSource,
    image_size: Sequence[int],
    angle: float = 90,
    output_dir: str | None = None,
) -> str:
    """Rotate images counter-clockwise by ``angle`` degrees, keeping them at ``image_size``.

    ``data`` is a folder (such as ``resize``'s output) or a list of image paths. The whole
    rotated picture is kept and then fitted back to ``image_size``, so downstream tasks always
    see the size they asked for, even for a quarter turn of a non-square image. Returns the
    folder holding the rotated images (a new temporary folder when ``output_dir`` is not given).
    """
    width, height = _image_size(image_size, "image_size")
    folder = _output_folder(output_dir, "dioptra-rotated-")
    for path in _image_files(data):
        with Image.open(path) as image:
            rotated = image.rotate(angle, expand=True)
            if rotated.size != (width, height):
                rotated = rotated.resize((width, height), Image.Resampling.LANCZOS)
            rotated.save(folder / path.name, format=image.format)
    return str(folder)


@pyplugs.register
def describe(data: ImageSource) -> dict[str, object]:
    """Summarise an image folder (count, distinct sizes, formats) as a small JSON-ready dict.

    Handy as a flow's last step: the runner records its return value in ``status.results``.
    """
    sizes: set[tuple[int, int]] = set()
    formats: set[str] = set()
    files = _image_files(data)
    for path in files:
        with Image.open(path) as image:
            sizes.add(image.size)
            formats.add(image.format or path.suffix.lstrip(".").upper())
    return {
        "count": len(files),
        "sizes": [list(size) for size in sorted(sizes)],
        "formats": sorted(formats),
    }


def _image_size(value: Sequence[int], name: str) -> tuple[int, int]:
    """Validate a ``[width, height]`` pair of positive integers (YAML gives lists)."""
    if (
        isinstance(value, str | bytes)
        or not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(
            f"{name} must be a [width, height] pair of positive integers, got {value!r}"
        )
    return int(value[0]), int(value[1])


def _output_folder(output_dir: str | None, prefix: str) -> Path:
    if output_dir is None:
        return Path(tempfile.mkdtemp(prefix=prefix))
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _image_files(data: ImageSource) -> list[Path]:
    """The PNG/JPEG files of a folder (sorted by name), or the given list of image paths."""
    if isinstance(data, str | os.PathLike):
        folder = Path(data)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no PNG or JPEG images in {folder}")
        return files
    files = [Path(p) for p in data]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image files not found: {', '.join(missing)}")
    return files
