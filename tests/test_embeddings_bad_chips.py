"""`clay-embed` over chips that are all bad leaves nothing that looks like a result (issue #22): no output, no parts,
no lock; one `error: …` line naming the chips and how many were bad, and status 1. Some good chips: a result."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from conftest import save_pretraining_model
from geotiffs import write_chips_with_nodata

from clay_hf.commands.embed import main as embed_main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_pretraining_model(tmp_path_factory.mktemp("model"))


def embed(model_dir, chips, output) -> int:
    return embed_main(["--model_name_or_path", str(model_dir), "--data_dir", str(chips), "--output", str(output),
                       "--image_size", "32", "--rows_per_part", "2"])  # fmt: skip


def test_every_chip_bad_leaves_no_output_and_says_why(model_dir, tmp_path, capfd, caplog):
    paths = write_chips_with_nodata(tmp_path / "chips", 3, bad=3)
    output = tmp_path / "out" / "e.parquet"
    assert embed(model_dir, tmp_path / "chips", output) == 1
    captured = capfd.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and captured.err.rstrip().endswith(errors[0])
    assert f"no chip of {tmp_path / 'chips'} could be embedded: all 3 were bad" in errors[0]
    assert all(f"skipped {path}: 0.00751% nodata" in caplog.text for path in paths)  # a warning names each, and why
    assert "wrote" not in captured.out
    assert not output.exists() and sorted(path.name for path in output.parent.iterdir()) == []  # no parts, no lock


def test_some_good_chips_still_give_a_result(model_dir, tmp_path, capfd):
    write_chips_with_nodata(tmp_path / "chips", 4, bad=3)
    output = tmp_path / "e.parquet"
    assert embed(model_dir, tmp_path / "chips", output) == 0
    assert "1 chips embedded (0 already done, 3 bad chips skipped)" in capfd.readouterr().out
    assert pq.read_metadata(output).num_rows == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["chips", "e.parquet"]
