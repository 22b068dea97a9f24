"""`embed_to_geoparquet` resumed after kills at any point, with the folder spelled another way, and chips of any
aspect ratio at the patch level."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import small_config
from geotiffs import write_geotiff

import clay_hf.inference.embeddings as embeddings
from clay_hf import ClayForMaskedImageModeling, ClayImageProcessor, ClayModel
from clay_hf.chipping import write_synthetic_chips
from clay_hf.evaluation.reconstruction import evaluate_reconstruction
from clay_hf.inference.embeddings import embed_to_geoparquet
from clay_hf.utils.errors import ResumeError


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ClayModel(small_config()).eval(), ClayImageProcessor()


@pytest.fixture()
def chips(tmp_path):
    write_synthetic_chips(tmp_path / "chips", 10, size=32, seed=3)
    return tmp_path / "chips"


def interrupt_after(monkeypatch, target: str, calls: int) -> None:
    """Make `clay_hf.inference.embeddings.<target>` raise KeyboardInterrupt (a kill) on its `calls`-th call."""
    original = getattr(embeddings, target)
    count = {"n": 0}

    def interrupted(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(embeddings, target, interrupted)


def rows(output):
    return pq.read_table(output).column("source_url").to_pylist()


def test_resume_with_the_folder_spelled_differently_writes_no_duplicates(encoder, chips, tmp_path, monkeypatch):
    model, processor = encoder
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "out.parquet"
    interrupt_after(monkeypatch, "embed_batch", 3)
    with pytest.raises(KeyboardInterrupt):
        embed_to_geoparquet(model, processor, "chips", output, batch_size=2, rows_per_part=2, progress=False)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    run = embed_to_geoparquet(
        model, processor, f"{chips.resolve()}/", output, batch_size=2, rows_per_part=2, resume=True, progress=False
    )
    assert (run.skipped_done, run.embedded) == (4, 6)
    names = [url.rsplit("/", 1)[-1] for url in rows(output)]
    assert len(names) == 10 and len(set(names)) == 10


def test_resume_after_a_kill_in_the_final_join_keeps_the_level_shape(encoder, chips, tmp_path, monkeypatch):
    model, processor = encoder
    output = tmp_path / "out.parquet"
    interrupt_after(monkeypatch, "_join_parts", 1)
    with pytest.raises(KeyboardInterrupt):
        embed_to_geoparquet(model, processor, chips, output, level="patch", rows_per_part=4, progress=False)
    monkeypatch.undo()
    run = embed_to_geoparquet(model, processor, chips, output, level="patch", resume=True, progress=False)
    assert run.embedded == 0 and run.shape == (4, 4, 32)
    table = pq.read_table(output)
    layout = json.loads(table.schema.metadata[b"clay:embeddings"])
    assert (layout["level"], layout["shape"], layout["dtype"]) == ("patch", [4, 4, 32], "float32")
    assert len(table) == 10
    assert table.column_names == ["source_url", "date", "embeddings", "geometry", "nodata_fraction"]
    with pytest.raises(ResumeError, match="level 'patch'"):
        interrupt_after(monkeypatch, "_join_parts", 1)
        with pytest.raises(KeyboardInterrupt):
            embed_to_geoparquet(model, processor, chips, output, level="patch", rows_per_part=4, progress=False)
        monkeypatch.undo()
        embed_to_geoparquet(model, processor, chips, output, level="mean", resume=True, progress=False)


def test_a_missing_part_never_makes_a_new_part_overwrite_a_finished_one(encoder, chips, tmp_path, monkeypatch):
    model, processor = encoder
    output = tmp_path / "out.parquet"
    interrupt_after(monkeypatch, "embed_batch", 4)
    with pytest.raises(KeyboardInterrupt):
        embed_to_geoparquet(model, processor, chips, output, batch_size=2, rows_per_part=2, progress=False)
    monkeypatch.undo()
    parts = sorted((tmp_path / "out.parquet.parts").glob("part-*.parquet"))
    assert len(parts) == 3
    parts[1].unlink()  # lost, e.g. removed by hand
    run = embed_to_geoparquet(
        model, processor, chips, output, batch_size=2, rows_per_part=2, resume=True, progress=False
    )
    assert (run.skipped_done, run.embedded) == (4, 6)
    assert len(rows(output)) == len(set(rows(output))) == 10


def test_non_square_chips_give_h_by_w_patch_embeddings(encoder, tmp_path):
    model, processor = encoder
    for i in range(3):
        write_geotiff(tmp_path / "chips" / f"wide{i}.tif", size=(32, 48), seed=i)
    run = embed_to_geoparquet(
        model, processor, tmp_path / "chips", tmp_path / "o.parquet", level="patch", image_size=(32, 48), progress=False
    )
    assert run.shape == (4, 6, 32)
    table = pq.read_table(run.output)
    assert json.loads(table.schema.metadata[b"clay:embeddings"])["shape"] == [4, 6, 32]
    vectors = np.stack(table.column("embeddings").to_numpy(zero_copy_only=False))
    assert vectors.shape == (3, 4 * 6 * 32)


def test_reconstruction_errors_are_each_chips_masked_loss_and_resume_only_the_same_way(chips, tmp_path, monkeypatch):
    """`reconstruction_error` holds, per chip, what evaluate.py reports for that chip alone (same random masks); the
    embeddings are the encoder's; a run with the column does not resume parts written without it, or back."""
    torch.manual_seed(0)
    full, processor = ClayForMaskedImageModeling(small_config()).eval(), ClayImageProcessor()
    output = tmp_path / "errors.parquet"
    embed_to_geoparquet(full.clay, processor, chips, output, batch_size=3, progress=False, reconstruction=full)
    table = pq.read_table(output)
    recorded = json.loads(table.schema.metadata[b"clay:embeddings"])["reconstruction_error"]
    assert recorded == {"masking": "random, seed 0", "mask_ratio": full.config.mask_ratio}
    errors = dict(zip(table["source_url"].to_pylist(), table["reconstruction_error"].to_pylist(), strict=True))
    assert len(set(errors.values())) == len(errors)  # one number per chip, not the batch's
    for url in list(errors)[:3]:
        alone = evaluate_reconstruction(full, processor, [url], batch_size=1, split="all")
        assert errors[url] == pytest.approx(alone["masked_mse"], rel=1e-5)

    plain = embed_to_geoparquet(full.clay, processor, chips, tmp_path / "plain.parquet", progress=False).output
    assert "reconstruction_error" not in pq.read_table(plain).column_names
    np.testing.assert_allclose(
        np.stack(table["embeddings"].to_numpy(zero_copy_only=False)),
        np.stack(pq.read_table(plain)["embeddings"].to_numpy(zero_copy_only=False)),
        rtol=1e-5,
        atol=1e-6,
    )

    broken = tmp_path / "broken.parquet"
    interrupt_after(monkeypatch, "embed_batch", 3)
    with pytest.raises(KeyboardInterrupt):
        embed_to_geoparquet(full.clay, processor, chips, broken, batch_size=2, rows_per_part=2, progress=False)
    monkeypatch.undo()
    with pytest.raises(ResumeError, match="written without reconstruction errors"):
        embed_to_geoparquet(
            full.clay, processor, chips, broken, batch_size=2, resume=True, progress=False, reconstruction=full
        )
