"""Images in memory and image folders.

:class:`ImageDataset` holds a labelled image set as ``float32 [N, C, H, W]`` in ``[0, 1]``
with ``int64`` labels; :func:`load_image_folder` reads a folder of PNG/JPEG files into one.
:func:`read_image_folder` is the one reader of image folders: it validates every file
(:func:`image_files`, :func:`decode_image`, the labels against :data:`CLASSES_FILE`) and
refuses a bad one with :class:`~fl_defense.errors.ConfigError` naming it, so that every
command that reads images (``attack --images``, ``dataset = "folder:/abs/dir"``) refuses
the same bad inputs before any work starts.

Resizing (everywhere): the shorter side is scaled to ``image_size`` with antialiased
bilinear interpolation and the centre is cropped square -- the ``Resize`` +
``CenterCrop`` pipeline of the iDLG reference code (Zhao et al., 2020).
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fl_defense.errors import ConfigError, check_int

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LABEL_IN_STEM = re.compile(r"_(\d+)$")


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image set held in memory.

    Attributes
    ----------
    images : float32 ndarray ``[N, C, H, W]``, values in ``[0, 1]``, square (``H == W``).
    labels : int64 ndarray ``[N]``, each in ``0..num_classes-1`` or ``-1`` (unknown).
    num_classes : number of classes (0 when every label is unknown).
    name : a short name (a registered data set, or ``folder:<dir>``).
    class_names : one name per class, or empty.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
            raise ValueError(f"images must be a float32 array [N, C, H, W]; got "
                             f"{type(x).__name__} {getattr(x, 'dtype', '')} "
                             f"shape {getattr(x, 'shape', '')}")
        if x.shape[2] != x.shape[3]:
            raise ValueError(f"images must be square; got H x W = {x.shape[2]} x {x.shape[3]}")
        if x.size and not (float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
            raise ValueError(f"image values must lie in [0, 1]; got range "
                             f"[{float(x.min())}, {float(x.max())}]")
        if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (x.shape[0],):
            raise ValueError(f"labels must be an int64 array of shape ({x.shape[0]},); got "
                             f"{getattr(y, 'dtype', type(y).__name__)} shape "
                             f"{getattr(y, 'shape', '')}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) \
                or self.num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0; got {self.num_classes!r}")
        if y.size and (int(y.min()) < -1 or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in -1..{self.num_classes - 1}; got range "
                             f"[{int(y.min())}, {int(y.max())}]")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for "
                             f"num_classes={self.num_classes}")

    @property
    def in_channels(self) -> int:
        """Number of colour channels ``C``."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Side length ``H == W`` in pixels."""
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def pil_to_uint8(img: PILImage.Image, image_size: int, channels: int) -> np.ndarray:
    """``uint8 [C, S, S]``: shorter side scaled to ``S`` (antialiased bilinear), centre crop."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # 16-bit / 32-bit grey
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8))
    img = img.convert("L" if channels == 1 else "RGB")
    img = F.center_crop(F.resize(img, [image_size]), [image_size, image_size])
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def to_float(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    return images.astype(np.float32, copy=True)


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Float ``[N, C, H, W]`` -> ``[N, C, size, size]`` (shorter side + centre crop)."""
    if images.shape[2] == size and images.shape[3] == size:
        return images
    import torch
    from torchvision.transforms.v2 import functional as F

    t = F.resize(torch.from_numpy(images), [size], antialias=True)
    t = F.center_crop(t, [size, size])
    return np.clip(t.numpy(), 0.0, 1.0).astype(np.float32, copy=False)


#: Pillow modes that hold one grey channel (``1``: bilevel; ``I``/``I;16``/``F``: 16/32-bit).
GREY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
#: The optional file of a folder that names its classes, one per line (line ``i`` = label ``i``).
CLASSES_FILE = "classes.txt"


def image_files(path: str | os.PathLike[str]) -> list[Path]:
    """The image files of a folder: every entry directly in it whose name ends in one of
    :data:`IMAGE_SUFFIXES` (any case), sorted by name.

    An entry with an image suffix that is not a readable regular file (a dangling
    symbolic link, a folder named ``x.png``) is refused, not skipped: a file the user
    meant to include must not silently drop out.  Other files are ignored.

    Raises
    ------
    ConfigError : the folder is missing, is not a folder, cannot be listed, holds no
        image file, or one of its image entries is not a regular file; the message names
        the folder or the entry.
    """
    folder = Path(path)
    if not folder.exists():
        raise ConfigError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise ConfigError(f"image folder {folder} is not a folder")
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise ConfigError(f"cannot list image folder {folder}: {exc.strerror or exc}") from None
    files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
    for p in files:
        if p.is_symlink() and not p.exists():
            raise ConfigError(f"image file {p} is a dangling symbolic link (to {os.readlink(p)})")
        if not p.is_file():
            raise ConfigError(f"image file {p} is not a regular file")
    if not files:
        raise ConfigError(f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return files


def folder_class_names(path: str | os.PathLike[str]) -> tuple[str, ...] | None:
    """The class names listed in the folder's :data:`CLASSES_FILE` (one per non-empty
    line, line ``i`` naming label ``i``), or ``None`` when the folder has none.

    Raises
    ------
    ConfigError : the file cannot be read, is not UTF-8 text, lists no name or a name
        twice.
    """
    p = Path(path) / CLASSES_FILE
    if not p.exists() and not p.is_symlink():
        return None
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"class list {p} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read class list {p}: {exc.strerror or exc}") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise ConfigError(f"class list {p} names no class (one name per line)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"class list {p} names {dup[0]!r} twice")
    return names


def label_of(path: Path) -> int:
    """The label in a file name ending in ``_<int>`` (``cat_3.png`` -> 3), else ``-1``."""
    m = _LABEL_IN_STEM.search(path.stem)
    return int(m.group(1)) if m else -1


def decode_image(path: Path) -> PILImage.Image:
    """The decoded (fully loaded) image in file ``path``.

    Raises
    ------
    ConfigError : the file cannot be read, is empty, is not an image Pillow can decode
        (a text file with an image suffix, a corrupt or truncated file), or is a
        decompression bomb (over twice ``PIL.Image.MAX_IMAGE_PIXELS``); the message names
        the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    if not data:
        raise ConfigError(f"image file {path} is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Image.DecompressionBombError as exc:
        raise ConfigError(f"image file {path} is too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise ConfigError(f"image file {path} is not a readable image (Pillow does not recognise "
                          f"its format; a text file or a damaged header?)") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError...
        why = str(exc) or type(exc).__name__
        raise ConfigError(f"image file {path} is not a readable image ({why})") from None
    return img


@dataclass(frozen=True, eq=False)
class ImageFolder:
    """The decoded content of an image folder (see :func:`read_image_folder`).

    Attributes
    ----------
    images : uint8 ndarray ``[N, C, S, S]``.
    labels : int64 ndarray ``[N]`` (``-1``: the file name carries no label).
    names : the file names, in the same order.
    num_classes : ``len(class_names)`` with a :data:`CLASSES_FILE`, else the largest
        label + 1 (0 when no file is labelled).
    class_names : from :data:`CLASSES_FILE`, else empty.
    converted : names of the grey files replicated to RGB because the folder also holds
        colour images.
    """

    images: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]
    num_classes: int
    class_names: tuple[str, ...]
    converted: tuple[str, ...] = ()


def read_image_folder(path: str | os.PathLike[str], *, image_size: int | None, channels: int | None = None,
                      require_labels: bool = False) -> ImageFolder:
    """Decode and validate every image file of a folder (:func:`image_files`).

    Every command that reads an image folder goes through here, so that every one of
    them refuses the same bad inputs, before any work starts, naming the file.

    Parameters
    ----------
    path : the folder.
    image_size : side ``S`` of the square images returned: the shorter side is scaled to
        ``S`` (antialiased bilinear) and the centre cropped (:func:`pil_to_uint8`).
        ``None``: the files keep their own size, which must be square and the same for
        all of them (else refused, naming the first file that differs).
    channels : 1 (grey: ITU-R 601 luma via Pillow's ``"L"``) or 3 (RGB, alpha dropped);
        ``None`` decides from the files: 1 when every file is grey (modes
        :data:`GREY_MODES`), else 3.  **Mixed folders are converted, not refused**: the
        grey files of a folder that also holds colour (or palette) images are replicated
        to R = G = B, which loses nothing; they are listed in ``converted``.
    require_labels : refuse a file whose name does not end in ``_<label>``.

    Labels and the number of classes: a file's label is the integer its name ends in
    (``cat_3.png`` -> 3).  With a :data:`CLASSES_FILE` in the folder the number of
    classes is its number of names, and a label outside ``0..K-1`` is refused; without
    one it is the largest label + 1.

    Raises
    ------
    ConfigError : see :func:`image_files`, :func:`folder_class_names` and
        :func:`decode_image`; a label outside the classes; a missing label with
        ``require_labels``.  The message names the file.
    """
    if image_size is not None:
        check_int("image_size", image_size, 1)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None; got {channels!r}")
    folder = Path(path)
    files = image_files(folder)
    class_names = folder_class_names(folder)
    labels = np.array([label_of(p) for p in files], dtype=np.int64)
    for p, label in zip(files, labels):
        if label < 0 and require_labels:
            raise ConfigError(f"image file {p} has no label: the name of every file of a data set "
                              f"folder must end in _<label> (e.g. cat_3.png)")
        if class_names is not None and label >= len(class_names):
            raise ConfigError(f"image file {p}: label {label} is outside the {len(class_names)} classes "
                              f"of {folder / CLASSES_FILE} (labels 0..{len(class_names) - 1})")
    decoded, grey = [], []
    first = None
    for p in files:
        img = decode_image(p)
        if image_size is None:
            first = first or (p, img.size)
            if img.size != first[1] or img.size[0] != img.size[1]:
                raise ConfigError(f"image file {p} is {img.size[0]}x{img.size[1]} but {first[0].name} is "
                                  f"{first[1][0]}x{first[1][1]}: to keep their own size the images of a folder "
                                  f"must be square and of one size; give --image-size to resize them")
        grey.append(img.mode in GREY_MODES)
        try:
            decoded.append(pil_to_uint8(img, image_size or img.size[0], channels or (1 if grey[-1] else 3)))
        except Exception as exc:  # an exotic mode Pillow decodes but cannot convert
            raise ConfigError(f"image file {p} (mode {img.mode}) cannot be converted: {exc}") from None
    converted: tuple[str, ...] = ()
    if channels is None and not all(grey):
        converted = tuple(p.name for p, g in zip(files, grey) if g)
        decoded = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in decoded]
    num_classes = len(class_names) if class_names is not None else \
        (int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0)
    return ImageFolder(np.stack(decoded), labels, tuple(p.name for p in files), num_classes,
                       class_names or (), converted)


def load_image_folder(path: str | os.PathLike[str], *, image_size: int | None,
                      channels: int | None = None) -> tuple[ImageDataset, list[str]]:
    """Load every image file directly in ``path`` (sorted by file name) as an
    :class:`ImageDataset` in ``[0, 1]``; see :func:`read_image_folder` for the
    conversion, the labels (``-1``: unknown), the number of classes and what is refused.
    Returns the data set and the file names, in the same order.
    """
    folder = read_image_folder(path, image_size=image_size, channels=channels)
    names = folder.class_names if len(folder.class_names) == folder.num_classes else ()
    ds = ImageDataset(to_float(folder.images), folder.labels, folder.num_classes,
                      f"folder:{Path(path).name}", names)
    return ds, list(folder.names)
