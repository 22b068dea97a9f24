"""STAC items → the band files of a datacube stack (assets matched to clay bands by key or `eo:bands`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import pystac

from ..data.bands import clay_band_name
from ..models.clay.configuration_clay import CLAY_V0_BAND_NAMES
from .datacube import BandSource

#: Asset keys of a Sentinel-2 scene classification (cloud mask) asset.
SCL_ASSET_KEYS = ("scl",)
#: Asset keys of the elevation in DEM collections (Copernicus DEM, NASADEM, …).
DEM_ASSET_KEYS = ("data", "elevation", "dem")
#: Asset roles that never hold a band of the stack.
SKIPPED_ROLES = {"thumbnail", "overview", "visual", "metadata"}


@dataclass
class StacBands:
    """What STAC items give a datacube run: band sources, the SCL cloud mask, the date and a tile id."""

    bands: list[BandSource] = field(default_factory=list)
    cloud_mask: str | None = None
    date: dt.date | None = None
    tile: str | None = None


def read_stac_item(href: str | PathLike | pystac.Item) -> pystac.Item:
    """A STAC item from a local path or URL (or an item already read); a clear error when it is not one."""
    if isinstance(href, pystac.Item):
        return href
    try:
        return pystac.Item.from_file(str(href))
    except Exception as error:  # pystac raises many kinds (OSError, JSON, STACTypeError, KeyError)
        raise ValueError(f"{href}: not a readable STAC item ({type(error).__name__}: {error})") from error


def stac_band_sources(items: Sequence[str | PathLike | pystac.Item]) -> StacBands:
    """Match the assets of one or more items (e.g. Sentinel-2 + Sentinel-1 + DEM) to clay bands.

    An asset matches by its key (a clay band name or an alias such as `B02`, `VV`), else by its `eo:bands`
    common name or name; a DEM collection's `data` asset is `dem`; an `scl` asset is the cloud mask. Keys win over
    `eo:bands`, and a band found in two items is an error. The date is the first item's, the tile its MGRS tile
    (`s2:mgrs_tile` or the `mgrs` extension) or its id.
    """
    result = StacBands()
    origin: dict[str, str] = {}
    for item in map(read_stac_item, items):
        for source in _item_bands(item):
            if source.name in origin:
                raise ValueError(f"band {source.name!r} is in two STAC items: {origin[source.name]} and {item.id}")
            origin[source.name] = item.id
            result.bands.append(source)
        scl = next((asset for key, asset in item.assets.items() if key.lower() in SCL_ASSET_KEYS), None)
        if scl is not None and result.cloud_mask is None:
            result.cloud_mask = _href(item, scl)
        result.date = result.date or _item_date(item)
        result.tile = result.tile or _item_tile(item)
    if not result.bands:
        raise ValueError("no asset of the STAC items matches a clay band (by key, eo:bands or a DEM 'data' asset)")
    order = {name: index for index, name in enumerate(CLAY_V0_BAND_NAMES)}
    result.bands.sort(key=lambda source: order[source.name])
    return result


def search_stac_items(
    url: str,
    collections: Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    max_items: int | None = 10,
) -> list[pystac.Item]:
    """Items of a STAC API search (pystac-client, an optional dependency: `pip install "clay_hf[stac]"`)."""
    try:
        from pystac_client import Client
    except ImportError as error:
        raise ImportError('searching a STAC API needs pystac-client: pip install "clay_hf[stac]"') from error
    try:
        search = Client.open(url).search(collections=collections, bbox=bbox, datetime=datetime, max_items=max_items)
        return list(search.items())
    except Exception as error:  # network, HTTP and API errors come in many types
        raise ValueError(f"{url}: the STAC search failed ({type(error).__name__}: {error})") from error


def _item_bands(item: pystac.Item) -> list[BandSource]:
    """Band sources of one item: matches by asset key first, then by `eo:bands`."""
    by_key: dict[str, BandSource] = {}
    by_eo: dict[str, BandSource] = {}
    dem_collection = "dem" in (item.collection_id or "").lower()
    for key, asset in item.assets.items():
        if SKIPPED_ROLES & set(asset.roles or []):
            continue
        name = _clay_name(key) or ("dem" if dem_collection and key.lower() in DEM_ASSET_KEYS else None)
        if name is not None:
            by_key.setdefault(name, _declared(BandSource(name, _href(item, asset)), asset, 1))
            continue
        for index, band in enumerate(_eo_bands(asset), start=1):
            name = _clay_name(band.get("common_name") or band.get("eo:common_name") or "") or _clay_name(
                band.get("name") or ""
            )
            if name is not None:
                by_eo.setdefault(name, _declared(BandSource(name, _href(item, asset), index), asset, index))
    return list({**by_eo, **by_key}.values())


def _declared(source: BandSource, asset: pystac.Asset, index: int) -> BandSource:
    """`source` with what the asset's `raster:bands` (STAC 1.0) or `bands` (1.1) entry `index` declares: its nodata
    value, scale and offset (applied by the datacube step and recorded in the chips)."""
    entries = asset.extra_fields.get("raster:bands") or asset.extra_fields.get("bands") or []
    if len(entries) < index or not isinstance(entries[index - 1], dict):
        return source
    entry = entries[index - 1]
    nodata = entry.get("nodata", entry.get("raster:nodata"))
    scale = entry.get("scale", entry.get("raster:scale", 1.0))
    offset = entry.get("offset", entry.get("raster:offset", 0.0))
    return dataclasses.replace(
        source,
        nodata=None if nodata is None else float(nodata),
        scale=float(1.0 if scale is None else scale),
        offset=float(0.0 if offset is None else offset),
    )


def _clay_name(text: str) -> str | None:
    try:
        return clay_band_name(text) if text else None
    except ValueError:
        return None


def _eo_bands(asset: pystac.Asset) -> list[dict[str, Any]]:
    """The asset's band list: STAC 1.0 `eo:bands`, or STAC 1.1 `bands`."""
    return list(asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or [])


def _href(item: pystac.Item, asset: pystac.Asset) -> str:
    href = asset.get_absolute_href()
    if not href:
        raise ValueError(
            f"STAC item {item.id}: asset {asset.href!r} has no absolute href (save the item with a self link)"
        )
    return href


def _item_date(item: pystac.Item) -> dt.date | None:
    moment = item.datetime or item.common_metadata.start_datetime
    return moment.date() if moment else None


def _item_tile(item: pystac.Item) -> str | None:
    properties = item.properties
    if properties.get("s2:mgrs_tile"):
        return str(properties["s2:mgrs_tile"])
    parts = [properties.get(f"mgrs:{name}") for name in ("utm_zone", "latitude_band", "grid_square")]
    if all(part is not None for part in parts):
        return f"{int(parts[0]):02d}{parts[1]}{parts[2]}"
    return item.id


__all__ = ["StacBands", "read_stac_item", "search_stac_items", "stac_band_sources"]
