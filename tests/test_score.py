"""`geor score`: joining predictions to truth by id, counting every row, and the exit-2 errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from geor_core import uris
from geor_core.geo.geo import EARTH_RADIUS_KM, haversine_km
from geor_core.scoring.evaluation_report import COMPARISON_COLUMNS
from geor_core.scoring.scoring import METRIC_COLUMNS

FIXTURES = Path(__file__).parent / "fixtures"
IM2GPS3K = FIXTURES / "im2gps3k.csv"
YFCC4K = FIXTURES / "yfcc4k.csv"


def score(capsys, *argv: str) -> tuple[int, dict | None, str]:
    """Run `geor score argv...`; returns (exit code, the printed JSON or None, stderr)."""
    code = main(["score", *map(str, argv)])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 else None), err


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_im2gps3k_against_itself_is_perfect_with_its_three_coordinate_less_rows_counted(capsys, tmp_path):
    out_json = tmp_path / "result.json"
    code, result, _ = score(
        capsys, "--predictions", IM2GPS3K, "--truth", IM2GPS3K, "--id-col", "image_id", "--json", out_json
    )
    assert code == 0
    for threshold in (1, 25, 200, 750, 2500):
        assert result[f"acc_{threshold}km"] == 100.0
    assert result["n"] == 2997 and result["n_truth_rows"] == 3000
    assert result["n_truth_invalid"] == 3 and result["truth_invalid_reasons"] == {"missing_lat": 3}
    assert result["n_missing"] == 0 and result["missing_reasons"] == {}
    assert result["median_km"] == 0.0 and result["geoscore"] == 5000.0
    assert result["n_unmatched_predictions"] == 0 and result["format_rate"] is None
    assert json.loads(out_json.read_text()) == result


def test_yfcc4k_with_lon_before_lat_and_quoted_commas_against_itself(capsys):
    code, result, _ = score(capsys, "--predictions", YFCC4K, "--truth", YFCC4K, "--id-col", "name")
    assert code == 0
    assert result["n"] == 4536 and result["acc_1km"] == 100.0 and result["n_truth_invalid"] == 0


def test_accuracies_are_exact_percentages_of_every_truth_row(capsys, tmp_path):
    truth = pd.read_csv(IM2GPS3K, dtype=str, keep_default_na=False)
    valid = truth[truth["lat"] != ""].copy()
    lat = valid["lat"].astype(float).to_numpy()
    lon = valid["lon"].astype(float).to_numpy()
    offsets_km = np.array([0.0, 0.9, 24.0, 199.0, 749.0, 2499.0, 2600.0])[np.arange(len(valid)) % 7]
    toward_equator = -np.sign(lat)
    toward_equator[toward_equator == 0] = 1.0
    pred_lat = lat + toward_equator * offsets_km / (math.pi * EARTH_RADIUS_KM / 180.0)
    predictions = pd.DataFrame({"image_id": valid["image_id"], "lat": pred_lat, "lon": lon}).iloc[
        :-10
    ]  # 10 rows dropped
    predictions.to_csv(tmp_path / "pred.csv", index=False, float_format="%.12f")
    code, result, _ = score(
        capsys, "--predictions", tmp_path / "pred.csv", "--truth", IM2GPS3K, "--id-col", "image_id"
    )
    assert code == 0
    distance = np.full(len(valid), np.nan)
    distance[:-10] = haversine_km(pred_lat[:-10], lon[:-10], lat[:-10], lon[:-10])
    for threshold in (1, 25, 200, 750, 2500):
        expected = np.count_nonzero(distance <= threshold) * 100.0 / 2997
        assert result[f"acc_{threshold}km"] == pytest.approx(expected, abs=1e-9), threshold
    assert result["acc_1km"] == pytest.approx(
        100.0 * np.count_nonzero(offsets_km[:-10] <= 1) / 2997, abs=1e-9
    )
    assert result["n_missing"] == 10 and result["missing_reasons"] == {"no_prediction_row": 10}
    assert result["median_km"] == pytest.approx(np.nanmedian(distance))


def test_duplicate_ids_are_an_error_naming_them(capsys, tmp_path):
    truth = write_csv(
        tmp_path / "truth.csv", [{"id": "a", "lat": 1, "lon": 2}, {"id": "b", "lat": 3, "lon": 4}]
    )
    pred = write_csv(
        tmp_path / "pred.csv",
        [{"id": "a", "lat": 1, "lon": 2}, {"id": "b", "lat": 3, "lon": 4}, {"id": " a", "lat": 5, "lon": 6}],
    )
    code, _, err = score(capsys, "--predictions", pred, "--truth", truth)
    assert code == 2
    assert "predictions table" in err and "'a'" in err and "'b'" not in err and "Traceback" not in err
    code, _, err = score(capsys, "--predictions", truth, "--truth", pred)
    assert code == 2 and "truth table" in err and "'a'" in err


def test_missing_id_column_lists_the_columns(capsys):
    code, _, err = score(capsys, "--predictions", IM2GPS3K, "--truth", IM2GPS3K)
    assert code == 2 and "no column 'id'" in err and "image_id, lat, lon" in err


def test_empty_id_is_an_error(capsys, tmp_path):
    truth = write_csv(
        tmp_path / "truth.csv", [{"id": "a", "lat": 1, "lon": 2}, {"id": "", "lat": 3, "lon": 4}]
    )
    code, _, err = score(capsys, "--predictions", truth, "--truth", truth)
    assert code == 2 and "empty 'id'" in err and "data rows 1" in err


def test_unmatched_and_missing_predictions_are_counted(capsys, tmp_path):
    truth = write_csv(
        tmp_path / "truth.csv",
        [{"id": f"t{i}", "lat": 10.0 + i, "lon": 20.0} for i in range(6)]
        + [{"id": "bad", "lat": "x", "lon": 0}],
    )
    pred = write_csv(
        tmp_path / "pred.csv",
        [
            {"id": "t0", "lat": 10.0, "lon": 20.0},
            {"id": "t1", "lat": "", "lon": ""},  # empty cells
            {"id": "t2", "lat": "north", "lon": 20.0},  # not a number
            {"id": "t3", "lat": 95.0, "lon": 20.0},  # out of range
            {"id": "t4", "lat": 0.0, "lon": 0.0},  # (0, 0) is a guess like any other
            {"id": "x1", "lat": 1.0, "lon": 1.0},
            {"id": "x2", "lat": 1.0, "lon": 1.0},
        ],
    )
    code, result, _ = score(capsys, "--predictions", pred, "--truth", truth)
    assert code == 0
    assert (
        result["n"] == 6
        and result["n_truth_invalid"] == 1
        and result["truth_invalid_reasons"] == {"non_numeric_lat": 1}
    )
    assert result["n_missing"] == 4
    assert result["missing_reasons"] == {
        "missing_lat": 1,
        "non_numeric_lat": 1,
        "lat_out_of_range": 1,
        "no_prediction_row": 1,
    }
    assert result["n_unmatched_predictions"] == 2 and result["unmatched_prediction_ids"] == ["x1", "x2"]
    assert result["acc_1km"] == pytest.approx(100 / 6)
    assert result["mean_km"] == pytest.approx((0.0 + float(haversine_km(0.0, 0.0, 14.0, 20.0))) / 2)


def test_text_column_mode_parses_completions_and_rates_levels(capsys, tmp_path):
    truth = write_csv(
        tmp_path / "truth.csv",
        [
            {"id": "p", "lat": 48.8534, "lon": 2.3488},  # Paris
            {"id": "a", "lat": 43.77063, "lon": 142.36489},  # Asahikawa, Hokkaido
            {"id": "g", "lat": 10.0, "lon": 10.0},
            {"id": "m", "lat": 10.0, "lon": 10.0},
        ],
    )
    completions = {
        "p": "<think>Seine.</think><answer>Country: France; State: Île-de-France; City: Paris; Coordinates: (48.85 N, 2.35 E)</answer>",
        "a": "<answer>Country: Japan State: Hokkaido City: Sapporo Coordinates: (43.06, 141.35) (1, 1)</answer>",
        "g": "I cannot tell.",
    }
    pd.DataFrame({"id": list(completions), "completion": list(completions.values())}).to_parquet(
        tmp_path / "pred.parquet"
    )
    code, result, _ = score(
        capsys, "--predictions", tmp_path / "pred.parquet", "--truth", truth, "--text-col", "completion"
    )
    assert code == 0 and result["mode"] == "text"
    assert result["n"] == 4 and result["n_missing"] == 2
    assert result["missing_reasons"] == {"no_pair": 1, "no_prediction_row": 1}
    assert result["format_rate"] == 25.0  # the second answer has two pairs
    assert result["acc_25km"] == 25.0 and result["acc_200km"] == 50.0
    assert result["country_match_rate"] == 50.0 and result["state_match_rate"] == 50.0
    assert result["city_match_rate"] == 25.0


def test_csv_with_byte_order_mark_and_quoted_commas(capsys, tmp_path):
    text = 'id,note,lat,lon\n"r,1","a, quoted, note",1.5,2.5\nr2,"x",3.5,4.5\n'
    (tmp_path / "truth.csv").write_bytes(text.encode("utf-8-sig"))
    (tmp_path / "pred.csv").write_text('id,lat,lon\n"r,1",1.5,2.5\nr2,3.5,4.5\n', encoding="utf-8")
    code, result, _ = score(capsys, "--predictions", tmp_path / "pred.csv", "--truth", tmp_path / "truth.csv")
    assert (
        code == 0
        and result["n"] == 2
        and result["acc_1km"] == 100.0
        and result["n_unmatched_predictions"] == 0
    )


def test_integer_ids_in_parquet_join_text_ids_in_csv(capsys, tmp_path):
    pd.DataFrame({"id": [7, 8], "lat": [1.0, 2.0], "lon": [3.0, 4.0]}).to_parquet(tmp_path / "pred.parquet")
    truth = write_csv(
        tmp_path / "truth.csv", [{"id": "7", "lat": 1.0, "lon": 3.0}, {"id": "8", "lat": 2.0, "lon": 4.0}]
    )
    code, result, _ = score(capsys, "--predictions", tmp_path / "pred.parquet", "--truth", truth)
    assert code == 0 and result["acc_1km"] == 100.0


def test_unknown_format_and_missing_file_are_clear_errors(capsys, tmp_path):
    (tmp_path / "pred.json").write_text("{}")
    code, _, err = score(capsys, "--predictions", tmp_path / "pred.json", "--truth", IM2GPS3K)
    assert code == 2 and "unknown table format" in err
    code, _, err = score(capsys, "--predictions", tmp_path / "nope.csv", "--truth", IM2GPS3K)
    assert code == 2 and "does not exist" in err


def test_s3_round_trip(capsys, s3_prefix):
    truth_uri = uris.join(s3_prefix, "truth.csv")
    pred_uri = uris.join(s3_prefix, "pred", "part-0.parquet")
    uris.write_atomic(truth_uri, IM2GPS3K.read_bytes())
    table = pd.read_csv(IM2GPS3K, dtype=str, keep_default_na=False)
    uris.write_atomic(pred_uri, table.to_parquet(index=False))
    out_uri = uris.join(s3_prefix, "result.json")
    code, result, _ = score(
        capsys,
        "--predictions",
        uris.join(s3_prefix, "pred"),
        "--truth",
        truth_uri,
        "--id-col",
        "image_id",
        "--json",
        out_uri,
    )
    assert code == 0 and result["n"] == 2997 and result["acc_1km"] == 100.0
    assert json.loads(uris.read_text(out_uri)) == result


def test_score_command_does_not_import_ray():
    probe = "import sys, flows.commands.score_command; sys.exit(1 if 'ray' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def test_printed_table_shows_every_threshold_with_two_decimals(capsys):
    assert (
        main(["score", "--predictions", str(IM2GPS3K), "--truth", str(IM2GPS3K), "--id-col", "image_id"]) == 0
    )
    table = capsys.readouterr().out
    for threshold in (1, 25, 200, 750, 2500):
        assert f"acc_{threshold}km (%)" in table
    assert "100.00" in table and "missing_lat" in table


def test_score_table_and_evaluate_comparison_show_the_same_metrics_in_one_order(capsys, tmp_path):
    truth = write_csv(tmp_path / "truth.csv", [{"id": "p", "lat": 48.8534, "lon": 2.3488}])
    completion = (
        "<answer>Country: France; State: Île-de-France; City: Paris; Coordinates: (48.85, 2.35)</answer>"
    )
    write_csv(tmp_path / "pred.csv", [{"id": "p", "completion": completion}])
    argv = [
        "score",
        "--predictions",
        str(tmp_path / "pred.csv"),
        "--truth",
        str(truth),
        "--text-col",
        "completion",
    ]
    assert main(argv) == 0
    names = [
        line.split()[0] for line in capsys.readouterr().out.splitlines() if line and not line.startswith(" ")
    ]
    shown = [name for name in names if name in METRIC_COLUMNS]
    assert shown == list(METRIC_COLUMNS)  # every metric computed in text mode, in the shared order
    start = COMPARISON_COLUMNS.index(METRIC_COLUMNS[0])
    assert COMPARISON_COLUMNS[start : start + len(METRIC_COLUMNS)] == METRIC_COLUMNS


def test_numeric_predictions_with_name_columns_get_level_rates(capsys, tmp_path):
    truth = write_csv(
        tmp_path / "truth.csv",
        [{"id": "p", "lat": 48.8534, "lon": 2.3488}, {"id": "a", "lat": 43.77063, "lon": 142.36489}],
    )
    pred = write_csv(
        tmp_path / "pred.csv",
        [
            {"id": "p", "lat": 48.85, "lon": 2.35, "country": "FR", "state": "Île-de-France", "city": "Lyon"},
            {"id": "a", "lat": 43.77, "lon": 142.36, "country": "Japan", "state": "Aomori", "city": ""},
        ],
    )
    code, result, _ = score(capsys, "--predictions", pred, "--truth", truth)
    assert code == 0 and result["format_rate"] is None
    assert (result["country_match_rate"], result["state_match_rate"], result["city_match_rate"]) == (
        100.0,
        50.0,
        0.0,
    )
