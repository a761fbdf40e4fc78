"""Dense tiling of a scene for the feature extraction (``features``): which U-Net input tiles
cover it and which pixels each serves (re-exported by ``features``)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from ._feature_spec import FeatureSpec


@dataclasses.dataclass(frozen=True)
class Tile:
    """A dense tile: U-Net input at scene (r0, c0) of size (h, w); it serves the scene pixels
    rows[0]:rows[1], cols[0]:cols[1]."""

    r0: int
    c0: int
    h: int
    w: int
    rows: tuple[int, int]
    cols: tuple[int, int]


def plan_tiles(
    height: int, width: int, window: int, spec: FeatureSpec, multiple: int
) -> list[Tile]:
    """Cover the scene with tiles whose served pixels have their whole window plus ``margin``
    inside the tile. A scene that fits in one tile gets exactly one (no redundant work).

    The halo is rounded up to ``multiple`` so that every tile starts at a multiple of it: the
    cells of every decoder stage (1/2, 1/4 of the resolution) then fall on one grid over the
    scene, and the stored stage maps (``_stage_maps``) stitch tiles cell by cell."""
    halo = -(-(window // 2 + spec.margin) // multiple) * multiple

    def axis(n: int) -> list[tuple[int, int, int]]:
        size = n + 2 * halo
        size = -(-size // multiple) * multiple
        if size <= spec.tile:
            return [(-halo, size, 0)]
        tile = -(-spec.tile // multiple) * multiple
        core = tile - 2 * halo
        if core < multiple:
            raise InputError(
                f"tile {spec.tile} is too small for window {window} and margin {spec.margin}: "
                f"use a tile of at least {2 * halo + 4 * multiple}"
            )
        return [(s - halo, tile, s) for s in range(0, n, core)]

    tiles = []
    for r0, h, rs in axis(height):
        for c0, w, cs in axis(width):
            core_h = h - 2 * halo
            core_w = w - 2 * halo
            tiles.append(
                Tile(r0, c0, h, w, (rs, min(rs + core_h, height)), (cs, min(cs + core_w, width)))
            )
    return tiles
