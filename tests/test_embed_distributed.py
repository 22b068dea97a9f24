"""Embedding on several processes (accelerate launch, CPU ranks), resume after a rank dies, float16 storage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import save_pretraining_model

from clay_hf.chipping import write_synthetic_chips
from clay_hf.inference.embeddings import embed_to_geoparquet, load_encoder
from clay_hf.inference.ranks import shard

REPO = Path(__file__).resolve().parents[1]

#: Imported by every Python process started with its folder on PYTHONPATH: rank 1 dies (os._exit, as a killed
#: process does) when it is about to embed its second chip, after its first part is on disk.
DIE_ON_RANK_1 = """
import os
if os.environ.get("RANK") == "1":
    import clay_hf.inference.embeddings as embeddings
    original, calls = embeddings.embed_batch, []
    def embed_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os._exit(1)
        return original(*args, **kwargs)
    embeddings.embed_batch = embed_batch
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A small model, 8 chips and the single-process output to compare with."""
    folder = tmp_path_factory.mktemp("distributed")
    save_pretraining_model(folder / "model")
    write_synthetic_chips(folder / "chips", 8, size=32, seed=3)
    model, processor = load_encoder(str(folder / "model"))
    reference = embed_to_geoparquet(model, processor, folder / "chips", folder / "single.parquet", progress=False)
    return {"folder": folder, "reference": pq.read_table(reference.output)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(job, output: Path, *extra: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """scripts/embed.py on 2 CPU processes under accelerate launch."""
    paths = [str(pythonpath)] if pythonpath else []
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(REPO / "scripts" / "embed.py"),
        "--model_name_or_path", str(job["folder"] / "model"), "--data_dir", str(job["folder"] / "chips"),
        "--output", str(output), "--batch_size", "1", "--rows_per_part", "1", *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def assert_same_rows(actual: pa.Table, expected: pa.Table) -> None:
    """Same chips, dates and footprints, embeddings within 1e-5 (rows compared in source order)."""
    actual, expected = actual.sort_by("source_url"), expected.sort_by("source_url")
    assert actual.column("source_url").to_pylist() == expected.column("source_url").to_pylist()
    assert actual.column("date").to_pylist() == expected.column("date").to_pylist()
    assert actual.column("geometry").to_pylist() == expected.column("geometry").to_pylist()
    vectors = np.stack(actual.column("embeddings").to_numpy(zero_copy_only=False))
    reference = np.stack(expected.column("embeddings").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(vectors, reference, rtol=1e-5, atol=1e-5)


def test_shards_are_contiguous_disjoint_and_cover_everything():
    items = list(range(11))
    shares = [shard(items, rank, 3) for rank in range(3)]
    assert shares == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10]]
    assert shard(items[:1], 0, 2) + shard(items[:1], 1, 2) == [0]  # fewer items than ranks: some get none


def test_two_cpu_processes_write_the_same_geoparquet_as_one(job, tmp_path):
    result = launch(job, tmp_path / "two.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    two = pq.read_table(tmp_path / "two.parquet")
    assert two.column("source_url").to_pylist() == job["reference"].column("source_url").to_pylist()  # source order
    assert_same_rows(two, job["reference"])
    assert two.schema.metadata[b"geo"] == job["reference"].schema.metadata[b"geo"]
    assert "8 chips embedded" in result.stdout
    assert "chips/s in all (rank 0: " in result.stdout and "rank 1: " in result.stdout and "(4)" in result.stdout
    assert not (tmp_path / "two.parquet.parts").exists()


def test_a_killed_rank_resumes_without_duplicates(job, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DIE_ON_RANK_1)
    output = tmp_path / "resumed.parquet"
    crashed = launch(job, output, pythonpath=hook)
    assert crashed.returncode != 0 and not output.exists()
    parts = output.with_name(output.name + ".parts")
    assert len(list((parts / "rank-00001").glob("part-*.parquet"))) == 1  # rank 1's first chip is on disk

    result = launch(job, output, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    done_before = int(result.stdout.split("chips embedded (")[1].split(" already done")[0])
    assert done_before >= 1  # at least rank 1's finished part was kept, not recomputed
    resumed = pq.read_table(output)
    urls = resumed.column("source_url").to_pylist()
    assert len(urls) == len(set(urls)) == 8
    assert_same_rows(resumed, job["reference"])


def test_float16_embeddings(job, tmp_path):
    model, processor = load_encoder(str(job["folder"] / "model"))
    run = embed_to_geoparquet(
        model, processor, job["folder"] / "chips", tmp_path / "half.parquet", embeddings_dtype="float16", progress=False
    )
    half = pq.read_table(run.output)
    assert half.schema.field("embeddings").type.value_type == pa.float16()
    assert json.loads(half.schema.metadata[b"clay:embeddings"])["dtype"] == "float16"
    vectors = np.stack(half.column("embeddings").to_numpy(zero_copy_only=False)).astype(np.float32)
    reference = np.stack(job["reference"].column("embeddings").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(vectors, reference, rtol=1e-3, atol=1e-3)  # float16 keeps ~3 significant digits
    assert np.abs(vectors - reference).max() > 0  # and is not float32

    from clay_hf.search import build_index, search

    build_index(run.output, tmp_path / "index")  # the search table holds them as float32
    url = half.column("source_url")[0].as_py()
    hits = search(tmp_path / "index", like=[url], k=1)
    assert hits.column("source_url").to_pylist() == [url] and hits.column("distance")[0].as_py() < 1e-6
