"""Local labelled data read under limits: an image folder, a ``.safetensors``/``.npz`` file or IDX.

The orchestrator imports a user's dataset with these readers (``POST /datasets/import``), and
nodes are to read their own local data with the same ones, so the readers and every limit
live here, importing nothing from the server. Each returns ``x`` uint8 [N, C, H, W], ``y``
int64 [N] and one name per class; anything else raises :class:`DataError` naming the file
or the field.

* **Image folder**: one sub-folder per class (the class names are the folder names,
  sorted), each holding PNG or JPEG files. Hidden entries (``.*``) and files beside the
  class folders are skipped; a symbolic link, a nested folder or any other file is refused.
  Every header is read first (format, size, mode), so a huge image is refused by its header
  before anything is decoded; Pillow's own decompression-bomb check runs as it opens a file.
  The images become greyscale (``L``) when every one is greyscale (``1``, ``L``, ``LA``),
  else ``RGB``; alpha is dropped. Images of different sizes are refused unless a ``size``
  (height, width) is given, and then every image of another size is resized (bilinear).
* **Arrays**: ``x`` uint8, NxHxW (one channel) or NxHxWxC (C of 1..4, channels last), and
  ``y`` integer labels. ``.npz`` is read with ``allow_pickle=False`` once its members'
  declared sizes are within the limit; ``.safetensors`` with fedavg's one safetensors
  parser (``node.shared.weights.decode_tensors``), as strict as the library's. The classes
  are ``class_names`` when given, else "0".."K-1" for labels 0..K-1.
* **IDX**: an images file named as MNIST's (``*-images-idx3-ubyte``, plain or ``.gz``) and
  the labels file beside it (``*-labels-idx1-ubyte``), parsed by ``node.shared.idx``.
* **Classes**: 2..``max_classes``, and at least two of them must hold samples; a class may
  hold none (a label that never occurs), but no label may lie outside 0..K-1.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from node.shared.errors import DataError, WeightsError
from node.shared.idx import IMAGES_PART, is_idx_images, labels_beside, read_idx
from node.shared.model import MAX_INPUT_ELEMENTS
from node.shared.weights import decode_tensors

MiB: Final = 1 << 20
GiB: Final = 1 << 30
FORMATS: Final = ("PNG", "JPEG")
GREY_MODES: Final = frozenset({"1", "L", "LA"})
COLOUR_MODES: Final = frozenset({"P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"})
MAX_CHANNELS_LAST: Final = 4  # NxHxWxC with C above this is taken for a mistake (NxCxHxW?)
MAX_CLASS_NAME: Final = 100  # characters
LABEL_DTYPES: Final = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})
IMAGE_FOLDER, NPZ, SAFETENSORS, IDX = "image-folder", "npz", "safetensors", "idx"
# Errors that Pillow raises for a file it cannot read (SyntaxError: a broken PNG chunk).
_PIL_ERRORS: Final = (OSError, SyntaxError, ValueError, EOFError)

Progress = Callable[[str, int, int], None]  # (stage, done, total), as server.datasets.progress


def _silent(stage: str, done: int, total: int) -> None:
    """The progress callback of a caller that does not listen."""


@dataclass(frozen=True, slots=True)
class DataLimits:
    """What one read may cost. ``bytes_setting``/``samples_setting`` name the knob in the
    refusals (the server's environment variables, say)."""

    max_bytes: int = 2 * GiB  # the files read, and the decoded ``x``
    max_samples: int = 1_000_000
    max_classes: int = 1000
    max_side: int = 4096  # pixels, each side of a source image or of ``size``
    max_file_bytes: int = 64 * MiB  # one image file
    bytes_setting: str = "max_bytes"
    samples_setting: str = "max_samples"


DEFAULT_LIMITS: Final = DataLimits()


@dataclass(frozen=True, slots=True)
class LocalData:
    """A labelled set as read: ``x`` uint8 [N, C, H, W], ``y`` int64 [N] in 0..K-1."""

    x: torch.Tensor
    y: torch.Tensor
    class_names: tuple[str, ...]
    data_format: str  # IMAGE_FOLDER, NPZ, SAFETENSORS or IDX
    detail: str  # how the samples were made, e.g. "RGB 32x32, 3 resized"


def read_local_data(
    path: Path,
    limits: DataLimits = DEFAULT_LIMITS,
    *,
    class_names: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
    progress: Progress = _silent,
) -> LocalData:
    """Read a folder of class folders, or a ``.npz``/``.safetensors`` file, by what ``path`` is."""
    if path.is_dir():
        if class_names is not None:
            raise DataError(
                "class_names: an image folder's classes are its sub-folders' names; "
                "class_names is for .safetensors and .npz files"
            )
        return read_image_folder(path, limits, size=size, progress=progress)
    if size is not None:
        raise DataError("size: resizing is for image folders; array files keep their shape")
    readers = {".npz": read_npz, ".safetensors": read_safetensors}
    reader = read_idx_pair if is_idx_images(path) else readers.get(path.suffix.lower())
    if reader is None or not path.is_file():
        raise DataError(
            f"path: {path.name} is not an image folder, a .safetensors or .npz file, or an "
            f"IDX images file (*-{IMAGES_PART}[.gz])"
        )
    progress("read", 0, 1)
    data = reader(path, limits, class_names=class_names)
    progress("read", 1, 1)
    return data


# -- image folders -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Image:
    shown: str  # the name errors give: <folder>/<class>/<file>
    path: Path
    label: int
    size: tuple[int, int]  # (height, width)
    mode: str


def read_image_folder(
    root: Path,
    limits: DataLimits = DEFAULT_LIMITS,
    *,
    size: tuple[int, int] | None = None,
    progress: Progress = _silent,
) -> LocalData:
    """Every header first (format, size, mode: the limits), then the pixels."""
    if size is not None:
        _check_side("size", size, limits)
    files, names = _list_images(root, limits)
    if not files:
        raise DataError(f"{root.name}: no samples (its class folders hold no files)")
    steps = 2 * len(files)
    images = []
    for done, (shown, path, label) in enumerate(files, 1):
        images.append(_header(shown, path, label, limits))
        progress("read", done, steps)
    mode = "L" if all(image.mode in GREY_MODES for image in images) else "RGB"
    height, width = size or _one_size(images)
    channels = 1 if mode == "L" else 3
    _check_samples(root.name, len(images), (channels, height, width), limits)
    x = torch.empty((len(images), channels, height, width), dtype=torch.uint8)
    pixels = x.numpy()  # the same memory: each image is written into it once
    for i, image in enumerate(images):
        pixels[i] = (
            _decode(image, mode, (height, width))
            .reshape(height, width, channels)
            .transpose(2, 0, 1)
        )
        progress("read", len(images) + i + 1, steps)
    y = torch.tensor([image.label for image in images], dtype=torch.int64)
    check_classes(y, names, limits)
    resized = sum(image.size != (height, width) for image in images)
    detail = f"{mode} {height}x{width}" + (f", {resized} resized" if resized else "")
    return LocalData(x, y, names, IMAGE_FOLDER, detail)


def _list_images(
    root: Path, limits: DataLimits
) -> tuple[list[tuple[str, Path, int]], tuple[str, ...]]:
    """``(shown name, path, label)`` of every image, and the class names; counts and bytes
    are bounded as the folders are listed, before any file is opened."""
    folders = [e for e in _entries(root, root.name) if e.is_dir(follow_symlinks=False)]
    if not folders:
        raise DataError(
            f"{root.name}: no class folders (one sub-folder per class, holding PNG or JPEG files)"
        )
    if len(folders) > limits.max_classes:
        raise DataError(
            f"classes: {len(folders)} class folders, over the limit of {limits.max_classes}"
        )
    files: list[tuple[str, Path, int]] = []
    total = 0
    for label, folder in enumerate(folders):
        for entry in _entries(Path(folder.path), f"{root.name}/{folder.name}"):
            shown = f"{root.name}/{folder.name}/{entry.name}"
            if not entry.is_file(follow_symlinks=False):
                raise DataError(f"{shown}: not a file; a class folder holds PNG or JPEG files only")
            try:
                nbytes = entry.stat(follow_symlinks=False).st_size
            except OSError as exc:
                raise DataError(f"{shown}: cannot read ({exc.strerror})") from exc
            if nbytes > limits.max_file_bytes:
                raise DataError(
                    f"{shown}: {nbytes:,} bytes, over the limit of "
                    f"{limits.max_file_bytes:,} per image"
                )
            total += nbytes
            if total > limits.max_bytes:
                raise DataError(
                    f"{root.name}: the images hold over {limits.max_bytes:,} bytes "
                    f"({limits.bytes_setting})"
                )
            if len(files) == limits.max_samples:
                raise DataError(
                    f"{root.name}: over {limits.max_samples:,} images ({limits.samples_setting})"
                )
            files.append((shown, Path(entry.path), label))
    return files, tuple(folder.name for folder in folders)


def _entries(folder: Path, shown: str) -> list[os.DirEntry[str]]:
    """A folder's entries by name, hidden ones skipped; a symbolic link is refused, so
    nothing inside the tree can point outside it."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"{shown}: cannot list the folder ({exc.strerror})") from exc
    for entry in entries:
        if entry.is_symlink():
            raise DataError(
                f"{shown}/{entry.name}: a symbolic link; links are not followed in an image folder"
            )
    return entries


@contextmanager
def _opened(shown: str, path: Path) -> Iterator[Image.Image]:
    """The image with only its header read; never through a link (``O_NOFOLLOW``)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise DataError(f"{shown}: cannot open ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as file:
        try:
            image = Image.open(file, formats=FORMATS)
        except UnidentifiedImageError:
            raise DataError(
                f"{shown}: not a PNG or JPEG image (cannot identify image file)"
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(f"{shown}: refused before decoding: {exc}") from None
        except _PIL_ERRORS as exc:
            raise DataError(f"{shown}: not a PNG or JPEG image ({exc})") from None
        with image:
            yield image


def _header(shown: str, path: Path, label: int, limits: DataLimits) -> _Image:
    with _opened(shown, path) as image:
        width, height = image.size
        mode = image.mode
    _check_side(shown, (height, width), limits)
    if mode not in GREY_MODES | COLOUR_MODES:
        raise DataError(
            f"{shown}: mode {mode} is not supported (8-bit greyscale, palette, RGB(A) or CMYK)"
        )
    return _Image(shown, path, label, (height, width), mode)


def _check_side(shown: str, size: tuple[int, int], limits: DataLimits) -> None:
    height, width = size
    if not (1 <= height <= limits.max_side and 1 <= width <= limits.max_side):
        raise DataError(
            f"{shown}: {height}x{width} pixels (height x width); each side must be "
            f"1..{limits.max_side}"
        )


def _one_size(images: list[_Image]) -> tuple[int, int]:
    first = images[0]
    for image in images:
        if image.size != first.size:
            raise DataError(
                f"{image.shown}: {image.size[0]}x{image.size[1]} pixels, but {first.shown} is "
                f"{first.size[0]}x{first.size[1]} (height x width); the images must all be one "
                'size, or give "size": [height, width] to resize them'
            )
    return first.size


def _decode(image: _Image, mode: str, size: tuple[int, int]) -> np.ndarray:
    """The pixels as uint8 (H, W) or (H, W, 3), converted and, when it differs, resized."""
    with _opened(image.shown, image.path) as opened:
        try:
            converted: Image.Image = opened
            if converted.mode in ("P", "PA"):  # through RGBA: a palette's transparency is kept
                converted = converted.convert("RGBA")
            converted = converted.convert(mode)
            if image.size != size:
                converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(converted, dtype=np.uint8)
        except (*_PIL_ERRORS, Image.DecompressionBombError) as exc:
            raise DataError(f"{image.shown}: cannot decode the image ({exc})") from None


# -- array files ---------------------------------------------------------------------------------


def read_npz(
    path: Path, limits: DataLimits = DEFAULT_LIMITS, *, class_names: Sequence[str] | None = None
) -> LocalData:
    """``x`` and ``y`` of a ``.npz``: the members' declared sizes are bounded before any is
    inflated (the zip reader never yields more than it declares), and nothing is unpickled."""
    shown = path.name
    _check_file(shown, path, limits)
    try:
        with zipfile.ZipFile(path) as archive:
            sizes = {info.filename: info.file_size for info in archive.infolist()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{shown}: not a .npz file ({exc})") from None
    for key in ("x", "y"):
        if f"{key}.npy" not in sizes:
            raise DataError(f"{shown}: {key}: missing (the file holds {sorted(sizes)})")
    if sizes["x.npy"] + sizes["y.npy"] > limits.max_bytes:
        raise DataError(
            f"{shown}: x and y hold over {limits.max_bytes:,} bytes ({limits.bytes_setting})"
        )
    try:
        with np.load(path, allow_pickle=False) as arrays:
            x, y = arrays["x"], arrays["y"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{shown}: cannot read x and y ({exc})") from None
    if x.dtype != np.uint8:
        raise DataError(f"{shown}: x: dtype {x.dtype}, expected uint8 (pixels 0..255)")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{shown}: y: dtype {y.dtype}, expected integer labels")
    if y.size and y.dtype == np.uint64 and int(y.max()) > np.iinfo(np.int64).max:
        raise DataError(f"{shown}: y: label {int(y.max())} is out of range")
    labels = torch.from_numpy(y.astype(np.int64))
    return labelled(
        shown, torch.from_numpy(np.ascontiguousarray(x)), labels, class_names, limits, NPZ
    )


def read_safetensors(
    path: Path, limits: DataLimits = DEFAULT_LIMITS, *, class_names: Sequence[str] | None = None
) -> LocalData:
    """``x`` and ``y`` of a ``.safetensors`` file (other tensors in it are ignored)."""
    shown = path.name
    nbytes = _check_file(shown, path, limits)
    data = bytearray(nbytes)
    try:
        with path.open("rb") as file:
            read = file.readinto(data)
    except OSError as exc:
        raise DataError(f"{shown}: cannot read ({exc.strerror})") from exc
    try:
        tensors = decode_tensors(memoryview(data)[:read])
    except WeightsError as exc:
        raise DataError(f"{shown}: {exc}") from None
    for key in ("x", "y"):
        if key not in tensors:
            raise DataError(f"{shown}: {key}: missing (the file holds {sorted(tensors)})")
    x, y = tensors["x"], tensors["y"]
    if x.dtype != torch.uint8:
        raise DataError(f"{shown}: x: dtype {_name(x.dtype)}, expected uint8 (pixels 0..255)")
    if y.dtype not in LABEL_DTYPES:
        raise DataError(f"{shown}: y: dtype {_name(y.dtype)}, expected integer labels")
    return labelled(shown, x, y.to(torch.int64), class_names, limits, SAFETENSORS)


def read_idx_pair(
    path: Path, limits: DataLimits = DEFAULT_LIMITS, *, class_names: Sequence[str] | None = None
) -> LocalData:
    """An IDX images file (``*-images-idx3-ubyte``, plain or ``.gz``, as MNIST ships them)
    and its labels file beside it (``*-labels-idx1-ubyte``). Each is read no deeper than
    the byte limit, so a gzip bomb costs no more than that."""
    shown, labels = path.name, labels_beside(path)
    if labels.is_symlink() or not labels.is_file():
        raise DataError(f"{shown}: its labels file {labels.name} (or .gz) is not beside it")
    for file in (path, labels):
        _check_file(file.name, file, limits)
    try:
        dims, pixels = read_idx(path, ndim=3, max_bytes=limits.max_bytes)
        (count,), label_bytes = read_idx(labels, ndim=1, max_bytes=limits.max_bytes)
    except DataError as exc:
        raise DataError(str(exc).replace(str(path.parent) + os.sep, "")) from None
    if count != dims[0]:
        raise DataError(f"{labels.name}: {count} labels for {dims[0]} images in {shown}")
    x = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).reshape(dims)
    y = torch.frombuffer(bytearray(label_bytes), dtype=torch.uint8).to(torch.int64)
    return labelled(shown, x, y, class_names, limits, IDX)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_file(shown: str, path: Path, limits: DataLimits) -> int:
    try:
        nbytes = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{shown}: cannot read ({exc.strerror})") from exc
    if nbytes > limits.max_bytes:
        raise DataError(
            f"{shown}: {nbytes:,} bytes, over the limit of {limits.max_bytes:,} "
            f"({limits.bytes_setting})"
        )
    return nbytes


def labelled(
    shown: str,
    x: torch.Tensor,
    y: torch.Tensor,
    class_names: Sequence[str] | None,
    limits: DataLimits,
    data_format: str,
) -> LocalData:
    """Arrays as a labelled set: ``x`` NxHxW or NxHxWxC made [N, C, H, W], all checked."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4 and 1 <= x.shape[3] <= MAX_CHANNELS_LAST:
        x = x.permute(0, 3, 1, 2)
    else:
        raise DataError(
            f"{shown}: x: shape {list(x.shape)} is neither NxHxW nor NxHxWxC with C of "
            f"1..{MAX_CHANNELS_LAST} (an NxCxHxW array? move its channels last)"
        )
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{shown}: x holds {x.shape[0]} samples but y has shape {list(y.shape)}")
    _check_samples(shown, x.shape[0], (x.shape[1], x.shape[2], x.shape[3]), limits)
    names = class_names_of(shown, y, class_names, limits)
    channels, height, width = x.shape[1:]
    return LocalData(x.contiguous(), y, names, data_format, f"{channels}x{height}x{width}")


# -- shared checks -------------------------------------------------------------------------------


def _check_samples(shown: str, n: int, shape: tuple[int, int, int], limits: DataLimits) -> None:
    """Count, sides, one sample's size (what a model takes) and the whole ``x``'s bytes."""
    channels, height, width = shape
    if n == 0:
        raise DataError(f"{shown}: no samples")
    if n > limits.max_samples:
        raise DataError(
            f"{shown}: {n:,} samples, over {limits.max_samples:,} ({limits.samples_setting})"
        )
    _check_side(shown, (height, width), limits)
    if channels * height * width > MAX_INPUT_ELEMENTS:
        raise DataError(
            f"{shown}: samples of {channels}x{height}x{width} hold over {MAX_INPUT_ELEMENTS:,} "
            "values, more than a model takes; make them smaller"
        )
    if n * channels * height * width > limits.max_bytes:
        raise DataError(
            f"{shown}: {n:,} samples of {channels}x{height}x{width} are over "
            f"{limits.max_bytes:,} bytes ({limits.bytes_setting})"
        )


def class_names_of(
    shown: str, y: torch.Tensor, given: Sequence[str] | None, limits: DataLimits
) -> tuple[str, ...]:
    """``given`` (checked), else "0".."K-1" for labels 0..K-1; every label must name a class."""
    low, high = int(y.min()), int(y.max())
    if given is not None:
        names = check_class_names(given, limits)
        where = f" (class_names names {len(names)} classes)"
    elif high >= limits.max_classes:
        raise DataError(
            f"{shown}: y: label {high} makes {high + 1:,} classes, over the limit of "
            f"{limits.max_classes}"
        )
    else:
        names, where = tuple(str(k) for k in range(max(high + 1, 2))), ""
    bad = low if low < 0 else high
    if low < 0 or high >= len(names):
        raise DataError(f"{shown}: y: label {bad} is outside 0..{len(names) - 1}{where}")
    check_classes(y, names, limits)
    return names


def check_class_names(given: Sequence[str], limits: DataLimits) -> tuple[str, ...]:
    names = tuple(given)
    if not 2 <= len(names) <= limits.max_classes:
        raise DataError(f"class_names: {len(names)} names; give 2..{limits.max_classes}")
    for name in names:
        if (
            not isinstance(name, str)
            or not 1 <= len(name) <= MAX_CLASS_NAME
            or not name.isprintable()
        ):
            raise DataError(
                f"class_names: {name!r} is not a name (1..{MAX_CLASS_NAME} printable characters)"
            )
    if len(set(names)) != len(names):
        raise DataError("class_names: the names must be different")
    return names


def check_classes(y: torch.Tensor, names: tuple[str, ...], limits: DataLimits) -> None:
    """2..max_classes classes, at least two of them holding samples."""
    if len(names) > limits.max_classes:
        raise DataError(f"classes: {len(names)} classes, over the limit of {limits.max_classes}")
    present = torch.bincount(y, minlength=len(names)).nonzero().flatten().tolist()
    if len(present) < 2:
        only = names[present[0]] if present else "none"
        raise DataError(f"classes: only one class ({only!r}); a classifier needs at least 2")
