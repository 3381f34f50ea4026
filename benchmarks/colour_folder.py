"""Write a folder of real colour images for ``--images DIR`` (offline stand-in for CIFAR-10).

The crops are :func:`attacks.targets.colour_targets`'s: 3x32x32 crops of scikit-image's
colour photographs (astronaut, coffee, chelsea, ...), each saved as ``crop-NN_L.png`` whose
suffix ``L`` is its label (drawn uniformly from 10 classes, seeded; the images have no
class of their own, the attack must infer the label from the update).

    python benchmarks/colour_folder.py /abs/colour --n 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attacks.targets import colour_targets  # noqa: E402
from fl_defense.io import atomic_write_bytes  # noqa: E402


def write_colour_folder(folder: Path, n: int, size: int = 32, seed: int = 0) -> list[Path]:
    """Write ``n`` labelled colour crops into ``folder`` (created); returns their paths."""
    import io

    from PIL import Image

    x, y = colour_targets(n, size=size, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (img, label) in enumerate(zip(x.numpy(), y.numpy())):
        buf = io.BytesIO()
        Image.fromarray((np.clip(img.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)).save(buf, "PNG")
        path = folder / f"crop-{i:02d}_{int(label)}.png"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.n < 1:
        print(f"error: --n must be >= 1, got {args.n}", file=sys.stderr)
        return 2
    paths = write_colour_folder(args.folder.resolve(), args.n, args.size, args.seed)
    print(f"wrote {len(paths)} images to {args.folder.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
