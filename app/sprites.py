"""Sprite sheets for the thumbnail scatter: every atlas image in one PNG, in a square grid of equal cells.

Plain numpy / PIL, no Streamlit. Thumbnail k sits in cell (row, col) = divmod(k, cols), its top-left pixel
at (col * cell, row * cell); unused cells at the end are black. The browser uploads the sheet once as a
WebGL texture and each point samples its own cell (app/components/sprite_scatter).
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np

# WebGL guarantees 4096 px textures on practically every device (WebGL2's floor is 2048, but no browser
# on a desktop or phone of the last decade stops below 4096); larger atlases get smaller thumbnails.
MAX_SHEET_SIDE = 4096
PNG_COMPRESS_LEVEL = 6  # zlib level: sheets are mostly dark background, level 6 is within 2 % of 9 at a third of the time
SHEET_CHANNELS = (1, 3)  # grayscale sheets are mode L PNGs (a third of the bytes), colour ones RGB


@dataclass(frozen=True)
class SpriteGrid:
    """Where each thumbnail lies in a sprite sheet: `count` cells of `cell` x `cell` px, `cols` per row."""

    count: int
    cols: int
    rows: int
    cell: int
    channels: int

    @property
    def width(self) -> int:
        return self.cols * self.cell

    @property
    def height(self) -> int:
        return self.rows * self.cell

    def origin(self, k: int) -> tuple[int, int]:
        """(x, y) in sheet pixels of thumbnail k's top-left corner."""
        if not 0 <= k < self.count:
            raise IndexError(f"thumbnail {k} is outside the sheet's {self.count}")
        row, col = divmod(k, self.cols)
        return col * self.cell, row * self.cell

    def to_dict(self) -> dict[str, int]:
        """JSON-ready geometry for the browser component."""
        return asdict(self) | {"width": self.width, "height": self.height}


def sprite_grid(count: int, side: int, channels: int = 1, max_side: int = MAX_SHEET_SIDE) -> SpriteGrid:
    """A square grid (cols = ceil(sqrt(count))) of `side`-px cells, cells shrunk so the sheet fits `max_side`."""
    if count < 1:
        raise ValueError("a sprite sheet needs at least one image")
    if side < 1 or max_side < 1:
        raise ValueError(f"thumbnail side {side} and sheet side {max_side} must be positive")
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    cell = min(side, max_side // cols)
    if cell < 1:
        raise ValueError(f"{count} images do not fit a {max_side} px sprite sheet even at 1 px each")
    return SpriteGrid(count=count, cols=cols, rows=rows, cell=cell, channels=channels)


def _resize(images: np.ndarray, side: int) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, side, side, C), each image resampled by PIL (box filter down, nearest up)."""
    from PIL import Image

    n, h, w, c = images.shape
    if (h, w) == (side, side):
        return images
    resample = Image.Resampling.BOX if side < h else Image.Resampling.NEAREST
    out = np.empty((n, side, side, c), dtype=np.uint8)
    for k in range(n):
        im = Image.fromarray(images[k, :, :, 0] if c == 1 else images[k])
        out[k] = np.asarray(im.resize((side, side), resample)).reshape(side, side, c)
    return out


def sheet_array(images: np.ndarray, side: int | None = None, max_side: int = MAX_SHEET_SIDE) -> tuple[np.ndarray, SpriteGrid]:
    """Lay out uint8 images (N, C, H, W) as one (rows * cell, cols * cell, C) array and its grid.

    `side` is the thumbnail side in px (default: the images' own); cells shrink if the sheet would pass `max_side`.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {images.shape}")
    n, c, h, w = images.shape
    if c not in SHEET_CHANNELS:
        raise ValueError(f"images must have 1 or 3 channels, not {c}")
    if h != w:
        raise ValueError(f"thumbnails are square; these images are {h}x{w}")
    grid = sprite_grid(n, side or h, c, max_side)
    thumbs = _resize(images.transpose(0, 2, 3, 1), grid.cell)  # (N, cell, cell, C)
    cells = np.zeros((grid.rows * grid.cols, grid.cell, grid.cell, c), dtype=np.uint8)
    cells[:n] = thumbs
    # (rows, cols, cell, cell, C) -> (rows, cell, cols, cell, C): the rows of cell pixels of one grid row side by side
    sheet = cells.reshape(grid.rows, grid.cols, grid.cell, grid.cell, c).transpose(0, 2, 1, 3, 4)
    return sheet.reshape(grid.height, grid.width, c), grid


def sprite_sheet(images: np.ndarray, side: int | None = None, max_side: int = MAX_SHEET_SIDE) -> tuple[bytes, SpriteGrid]:
    """PNG bytes of the sprite sheet of uint8 images (N, C, H, W) and its grid (see `sheet_array`)."""
    from PIL import Image

    sheet, grid = sheet_array(images, side, max_side)
    buf = io.BytesIO()
    Image.fromarray(sheet[:, :, 0] if grid.channels == 1 else sheet).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue(), grid
