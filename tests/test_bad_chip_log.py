"""One way to skip a bad chip (`BadChipLog`): its warnings say whose count they give, in DataLoader workers too."""

from __future__ import annotations

import logging
import re

from geotiffs import write_geotiff

from clay_hf.data import ChipLayout, chip_dataloader, load_chip_dataset
from clay_hf.data.chips import ChipError
from clay_hf.data.dataset import BadChipLog

SIZE = 16
COUNT = re.compile(
    r"skipped (?P<chip>\S+): .*\((?P<count>\d+) skipped so far(?: by DataLoader worker (?P<worker>\d))?\)"
)


def test_each_worker_names_itself_in_its_running_count(tmp_path):
    for index in range(4):
        write_geotiff(tmp_path / "bad" / f"chip{index}.tif", size=(SIZE, SIZE), crs=None)  # no CRS: a bad chip
    dataset = load_chip_dataset(tmp_path / "bad", layout=ChipLayout(size=(SIZE, SIZE)), num_shards=2)
    handler = logging.FileHandler(tmp_path / "warnings.log")  # the workers (forked) write their warnings here too
    logging.getLogger("clay_hf").addHandler(handler)
    try:
        batches = list(chip_dataloader(dataset, batch_size=1, num_workers=2))
    finally:
        logging.getLogger("clay_hf").removeHandler(handler)
        handler.close()
    assert sum(batch["bad_chips"] for batch in batches) == 4  # the run's total, counted in the main process
    lines = (tmp_path / "warnings.log").read_text().splitlines()
    warnings = [match for match in map(COUNT.search, lines) if match]
    assert len(warnings) == 4 and all(match["worker"] is not None for match in warnings)
    by_worker = {worker: [int(m["count"]) for m in warnings if m["worker"] == worker] for worker in ("0", "1")}
    assert by_worker == {"0": [1, 2], "1": [1, 2]}  # each worker counts its own skips, and says so


def test_a_log_keeps_what_it_skipped_when_asked(caplog):
    log, quiet = BadChipLog(keep=True), BadChipLog()
    with caplog.at_level(logging.WARNING, logger="clay_hf"):
        for chip in ("a.tif", "b.tif"):
            log.skip(ChipError(chip, "is bad"))
        quiet.skip(ChipError("c.tif", "is bad"))
    assert [str(error) for error in log.errors] == ["a.tif: is bad", "b.tif: is bad"] and log.count == 2
    assert quiet.count == 1 and quiet.errors == []
    assert "by DataLoader worker" not in caplog.text  # the main process's count is the process's own
