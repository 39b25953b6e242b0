"""`geor mine-hard`: the kept rows are exactly the train rows predicted beyond the radius (checked
against geor_core's Haversine on the predictions), val/test are copied untouched, and the output
is a `geor prepare`-format dataset that training accepts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.commands import mine_hard_command as mine_hard_command
from geor_core import uris
from geor_core.config import load_config
from geor_core.data.cor_rows import OUTPUT_SCHEMA
from geor_core.data.dataset import read_prepared
from geor_core.errors import UserFacingError
from geor_core.geo.geo import haversine_km
from geor_core.scoring.scoring import read_table
from tasks.mine_hard import hard_row_ids, run_mine_hard
from tests.plugins.models import run_command

FAST = ["eval.max_new_tokens=96", "eval.batch_size=8", "eval.rows_per_shard=16", "eval.max_rows=32"]


def _far_ids(predictions: pd.DataFrame, radius_km: float) -> set[str]:
    distance = haversine_km(
        predictions["lat"], predictions["lon"], predictions["truth_lat"], predictions["truth_lon"]
    )
    return set(predictions["id"][np.isnan(distance) | (distance > radius_km)])


def test_hard_rows_are_beyond_the_radius_or_missing():
    table = pa.table({"id": ["a", "b", "c", "d", "e"], "error_km": [10.0, 200.0, 200.5, np.nan, None]})
    assert hard_row_ids(table, 200.0) == {"c", "d", "e"}  # NaN or null: no prediction


def test_bad_radius_and_overlapping_paths_are_refused(prepared_world, tiny_model_dir, tmp_path):
    cfg = load_config("test")
    with pytest.raises(UserFacingError, match="must be > 0"):
        run_mine_hard(cfg, prepared_world, str(tiny_model_dir), str(tmp_path), 0.0)
    with pytest.raises(UserFacingError, match="must not be --data"):
        run_mine_hard(cfg, prepared_world, str(tiny_model_dir), f"{prepared_world}/hard", 200.0)


def test_mine_hard_keeps_exactly_the_rows_beyond_the_radius(
    ray_cluster, prepared_world, sft_checkpoint, tmp_path, capsys
):
    output = str(tmp_path / "hard")
    argv = ["--data", prepared_world, "--model", sft_checkpoint.export_uri, "--output", output,
            "--config", "test", *FAST]  # fmt: skip
    assert run_command(mine_hard_command, argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    predictions = read_table(uris.join(output, "predictions"))
    train = read_prepared(prepared_world, "train")
    assert predictions["id"].tolist() == train.column("id").to_pylist()[:32]  # every mined row predicted
    assert printed["radius_km"] == load_config("test").grpo.hard_radius_km

    # A radius at the median error splits the pool: some rows kept, some dropped. The second run
    # reuses the first run's predictions (same model and settings): no shard is generated again.
    radius = float(np.nanmedian(predictions["error_km"]))
    result = run_mine_hard(
        load_config("test", FAST), prepared_world, sft_checkpoint.export_uri, output, radius, overwrite=True
    )
    assert result.inference.shards_computed == [] and result.inference.shards_skipped == 2
    expected = _far_ids(predictions, radius)
    assert 0 < len(expected) < 32
    mined = read_prepared(output)
    assert mined.schema == OUTPUT_SCHEMA
    mined_train = mined.filter(pc.equal(mined.column("split"), "train"))
    assert set(mined_train.column("id").to_pylist()) == expected
    source_order = [i for i in train.column("id").to_pylist() if i in expected]
    assert mined_train.column("id").to_pylist() == source_order
    for split in ("val", "test"):
        assert read_prepared(output, split).equals(read_prepared(prepared_world, split))

    stats = json.loads(uris.read_text(uris.join(output, "stats.json")))
    mining = stats["mining"]
    assert (mining["rows_in"], mining["kept"], mining["dropped"]) == (32, len(expected), 32 - len(expected))
    assert sum(c["kept"] for c in mining["per_country"].values()) == len(expected)
    assert mining["unmined_splits_copied"] == {
        s: read_prepared(prepared_world, s).num_rows for s in ("test", "val")
    }
    assert uris.read_marker(output)["stats"] == stats

    from tasks.sft import check_inputs

    assert check_inputs(load_config("test"), output, sft_checkpoint.export_uri)["stats"]["splits"][
        "train"
    ] == len(expected)
    same = run_mine_hard(load_config("test", FAST), prepared_world, sft_checkpoint.export_uri, output, radius)
    assert same.skipped and same.stats == stats
    with pytest.raises(UserFacingError, match="pass --overwrite"):
        run_mine_hard(
            load_config("test", FAST), prepared_world, sft_checkpoint.export_uri, output, radius + 1
        )
