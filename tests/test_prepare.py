"""`geor prepare` end to end on the session's Ray cluster: real benchmark manifests, a manifest with
every kind of bad row, real photos with image checks, S3, re-runs, a killed run, the CLI, MLflow."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from geor_core.config import load_config
from geor_core.data.cor_rows import REASON_CODES
from geor_core.data.dataset import read_prepared, read_rejects
from geor_core.errors import UserFacingError
from geor_core.geo.countries import country_code
from geor_core.geo.parse import parse_many
from tasks.prepare import PrepareOutcome, run_prepare
from tests.plugins.servers import free_port

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]
STREETSCAPES = FIXTURES / "streetscapes"
GOOD_JPEG = sorted((STREETSCAPES / "images").glob("*.jpg"))[0]


def _prepare(manifest: Path | str, output: Path | str, *overrides: str) -> PrepareOutcome:
    cfg = load_config(None, [f"prepare.manifest={manifest}", f"prepare.output={output}", *overrides])
    return run_prepare(cfg)


def _fixture_rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")


@pytest.fixture(scope="module")
def im2gps3k(ray_cluster, tmp_path_factory) -> tuple[Path, PrepareOutcome]:
    output = tmp_path_factory.mktemp("im2gps3k") / "out"
    return output, _prepare(FIXTURES / "im2gps3k.csv", output, "prepare.id_col=image_id")


def test_im2gps3k_keeps_every_row_with_coordinates_and_rejects_the_rest(im2gps3k):
    output, outcome = im2gps3k
    truth = _fixture_rows(FIXTURES / "im2gps3k.csv")
    empty = truth[(truth["lat"] == "") | (truth["lon"] == "")]
    assert len(empty) == 3
    stats = outcome.stats
    assert (stats["rows_in"], stats["rows_out"], stats["rows_rejected"]) == (3000, 2997, 3)
    assert stats["rejects_by_reason"] == {"missing_lat": 3}
    assert sorted(read_rejects(str(output))["image_id"].to_pylist()) == sorted(empty["image_id"])
    rows = read_prepared(str(output)).to_pandas().set_index("id")
    kept = truth.drop(empty.index).set_index("image_id")
    assert sorted(rows.index) == sorted(kept.index)
    np.testing.assert_array_equal(rows.loc[kept.index, "lat"], kept["lat"].astype(float))
    np.testing.assert_array_equal(rows.loc[kept.index, "lon"], kept["lon"].astype(float))
    assert (rows.loc[kept.index, "image"] == [str(FIXTURES / i) for i in kept.index]).all()
    parsed = parse_many(rows["target"].tolist())
    assert parsed.format_ok.all() and parsed.chain_ok.all()
    np.testing.assert_allclose(parsed.lat, rows["lat"], atol=5e-7)
    assert (np.array(parsed.country) == rows["country"].to_numpy()).all()
    shares = rows["split"].value_counts(normalize=True)
    assert shares.to_dict() == pytest.approx({"train": 0.9, "val": 0.05, "test": 0.05}, abs=0.02)
    assert stats["splits"] == rows["split"].value_counts().to_dict()
    assert json.loads((output / "stats.json").read_text()) == stats
    marker = json.loads((output / "_SUCCESS.json").read_text())
    assert marker["stats"] == stats and marker["manifest_fingerprint"] == rows["source_fingerprint"].iloc[0]


def test_an_actor_pool_gives_the_same_rows_as_tasks(im2gps3k, tmp_path):
    output, _ = im2gps3k
    outcome = _prepare(
        FIXTURES / "im2gps3k.csv", tmp_path / "out", "prepare.id_col=image_id", "prepare.compute=actors"
    )
    assert outcome.stats["rows_out"] == 2997
    tasks_rows = read_prepared(str(output)).sort_by("id")
    actor_rows = read_prepared(str(tmp_path / "out")).sort_by("id")
    assert actor_rows.equals(tasks_rows)


def test_yfcc4k_through_the_cli_reads_lon_before_lat_and_quoted_commas(ray_cluster, tmp_path, capsys):
    manifest = FIXTURES / "yfcc4k.csv"
    argv = ["prepare", "--manifest", str(manifest), "--output", str(tmp_path / "out")]
    assert main([*argv, "--id-col", "name", "--lat-col", "lat", "--lon-col", "lon"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with manifest.open(encoding="utf-8", newline="") as handle:
        truth = {row["name"]: (float(row["lat"]), float(row["lon"])) for row in csv.DictReader(handle)}
    assert stats["rows_in"] == stats["rows_out"] == len(truth) == 4536  # every row is usable
    rows = read_prepared(str(tmp_path / "out"), columns=["id", "lat", "lon"]).to_pylist()
    assert len(rows) == 4536
    assert all((r["lat"], r["lon"]) == truth[r["id"]] for r in rows)
    assert not stats["skipped"]
    assert main([*argv, "--id-col", "name"]) == 0  # lat / lon are the default names anyway
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["skipped"] and "already complete" in err


def _write_broken_manifest(folder: Path) -> None:
    folder.mkdir()
    shutil.copy(GOOD_JPEG, folder / "good.jpg")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg at all" * 20)
    (folder / "a.csv").write_text(
        "id,image,lat,lon,comment\n"
        'ok1,good.jpg,48.7758,9.1829,"quoted, comma"\n'
        ",good.jpg,1,2,no id\n"
        "dup1,good.jpg,48.70,9.10,first of dup1\n"
        "no_image,,1,2,\n"
        "m_lat,good.jpg,,2,\n"
        "m_lon,good.jpg,1,,\n"
        "nn_lat,good.jpg,abc,2,\n"
        "nn_lon,good.jpg,1,east,\n"
        "nan_lat,good.jpg,NaN,2,\n"
        "nan_lon,good.jpg,1,nan,\n"
        "lat_far,good.jpg,91,2,\n"
        "lon_far,good.jpg,1,181,\n"
        "zero,good.jpg,0,0,\n"
        "img_gone,nothere.jpg,48.7,9.1,\n"
        "img_bad,corrupt.jpg,48.7,9.1,\n"
        "too,few,fields\n",
        encoding="utf-8",
    )
    (folder / "b.csv").write_text(
        "id,image,lat,lon\ndup1,good.jpg,10,10\nok3,good.jpg,-33.8688,151.2093\ndup1,good.jpg,11,11\n"
    )
    (folder / "c.csv").write_text("")
    (folder / "d.jsonl").write_text(
        '{"id": "ok4", "image": "good.jpg", "lat": 35.6895, "lon": 139.6917}\n{broken\n'
    )
    down = f"127.0.0.1:{free_port()}"  # nothing listens: http and ftp are listed, and fail per row
    (folder / "e.csv").write_bytes(
        f"id,image,lat,lon\nweb,http://{down}/x.jpg,48.7,9.1\nftp,ftp://{down}/x.jpg,48.7,9.1\n"
        "gopher,gopher://h/x.jpg,48.7,9.1\nup,../outside.jpg,48.7,9.1\netc,/etc/passwd,48.7,9.1\n"
        "nul,bad\0.jpg,48.7,9.1\n".encode()
        + b"latin,caf\xe9.jpg,48.7,9.1\nbig,"
        + b"x" * (2 << 20)
        + b".jpg,48.7,9.1\n"
    )


def test_a_column_named_twice_stops_the_job_naming_it(ray_cluster, tmp_path):
    (tmp_path / "m.csv").write_text("id,image,lat,lat,lon\na,a.jpg,1,2,3\n")
    with pytest.raises(UserFacingError, match="m.csv has the column 'lat' more than once"):
        _prepare(tmp_path / "m.csv", tmp_path / "out")
    assert not (tmp_path / "out" / "data").exists()  # found in pass 1, before any row is written


def test_a_broken_manifest_yields_every_reason_code(ray_cluster, tmp_path):
    _write_broken_manifest(tmp_path / "broken")
    schemes = "prepare.allowed_schemes=[file,s3,http,ftp]"
    stats = _prepare(tmp_path / "broken", tmp_path / "out", "prepare.check_images=true", schemes).stats
    expected = {
        "missing_id": 1,
        "duplicate_id": 2,
        "missing_image": 1,
        "missing_lat": 1,
        "missing_lon": 1,
        "non_numeric_lat": 1,
        "non_numeric_lon": 1,
        "nan_lat": 1,
        "nan_lon": 1,
        "lat_out_of_range": 1,
        "lon_out_of_range": 1,
        "null_island": 1,
        "image_missing": 1,
        "image_undecodable": 1,
        "malformed_line": 2,
        "image_unreadable": 2,
        "image_scheme_not_allowed": 1,
        "image_outside_root": 2,
        "image_path_invalid": 1,
        "not_utf8": 1,
        "field_too_large": 1,
    }
    assert stats["rejects_by_reason"] == expected
    assert set(expected) == set(REASON_CODES)  # the manifest exercises every reason there is
    assert (stats["rows_in"], stats["rows_out"]) == (29, 4)
    rows = read_prepared(str(tmp_path / "out")).to_pandas().set_index("id")
    assert sorted(rows.index) == ["dup1", "ok1", "ok3", "ok4"]
    assert rows.loc["dup1", "lat"] == 48.70  # the first dup1 in manifest order (a.csv) is kept
    assert rows.loc["ok3", "country_code"] == "AU" and rows.loc["ok4", "country_code"] == "JP"
    rejects = read_rejects(str(tmp_path / "out")).to_pandas()
    assert list(rejects.columns) == [
        "id",
        "image",
        "lat",
        "lon",
        "comment",
        "reason",
        "line",
        "source_file",
        "source_row",
    ]
    assert sorted(rejects.loc[rejects["reason"] == "malformed_line", "line"]) == ["too,few,fields", "{broken"]
    dups = rejects[rejects["reason"] == "duplicate_id"]
    assert dups["lat"].tolist() == ["10", "11"] and set(dups["source_file"]) == {
        str(tmp_path / "broken" / "b.csv")
    }
    assert rejects.loc[rejects["reason"] == "missing_id", "comment"].tolist() == ["no id"]

    kept_all = _prepare(
        tmp_path / "broken", tmp_path / "out-all", "prepare.check_images=true", "prepare.dedupe=false"
    )
    assert "duplicate_id" not in kept_all.stats["rejects_by_reason"]
    assert sorted(read_prepared(str(tmp_path / "out-all"), columns=["id"])["id"].to_pylist()) == [
        "dup1", "dup1", "dup1", "ok1", "ok3", "ok4"
    ]  # fmt: skip


def _streetscapes_copy(folder: Path) -> Path:
    shutil.copytree(STREETSCAPES, folder)
    (folder / "images" / "corrupt.jpg").write_bytes(GOOD_JPEG.read_bytes()[:2000])
    with (folder / "manifest.csv").open("a", encoding="utf-8") as handle:
        handle.write("images/corrupt.jpg,48.77,9.17,Germany,Baden-Württemberg,Stuttgart,test,,perspective\n")
        handle.write("images/missing.jpg,48.77,9.17,Germany,Baden-Württemberg,Stuttgart,test,,perspective\n")
    return folder


def test_streetscapes_photos_are_checked_and_get_their_gadm_country(ray_cluster, tmp_path):
    folder = _streetscapes_copy(tmp_path / "streetscapes")
    output = tmp_path / "out"
    stats = _prepare(folder / "manifest.csv", output, "prepare.check_images=true").stats
    assert stats["rejects_by_reason"] == {"image_undecodable": 1, "image_missing": 1}
    truth = _fixture_rows(STREETSCAPES / "manifest.csv").set_index("image")
    rows = read_prepared(str(output)).to_pandas().set_index("id")
    assert sorted(rows.index) == sorted(truth.index)  # no id column: the image path is the id
    assert (rows["image"] == [str(folder / ref) for ref in rows.index]).all()
    expected_codes = [country_code(name) for name in truth.loc[rows.index, "country"]]
    assert rows["country_code"].tolist() == expected_codes and set(expected_codes) == {"DE", "SG"}

    data_files = sorted((output / "data").iterdir())
    mtimes = [f.stat().st_mtime_ns for f in data_files]
    again = _prepare(folder / "manifest.csv", output, "prepare.check_images=true")
    assert again.skipped and again.stats == stats
    assert [f.stat().st_mtime_ns for f in sorted((output / "data").iterdir())] == mtimes
    with pytest.raises(UserFacingError, match="made from other prepare settings.*--overwrite"):
        _prepare(folder / "manifest.csv", output, "prepare.check_images=true", "prepare.seed=1")
    redone = _prepare(
        folder / "manifest.csv",
        output,
        "prepare.check_images=true",
        "prepare.seed=1",
        "prepare.overwrite=true",
    )
    assert not redone.skipped and redone.stats["rows_out"] == 25


def test_an_s3_manifest_and_output_round_trip(ray_cluster, s3_server, s3_prefix, tmp_path):
    folder = _streetscapes_copy(tmp_path / "streetscapes")
    s3_server.fs.put(str(folder), f"{s3_prefix}/photos", recursive=True)
    output = f"{s3_prefix}/prepared"
    stats = _prepare(f"{s3_prefix}/photos/manifest.csv", output, "prepare.check_images=true",
                     "prepare.holdout_countries=[SG]").stats  # fmt: skip
    assert stats["rejects_by_reason"] == {"image_undecodable": 1, "image_missing": 1}
    rows = read_prepared(output).to_pandas()
    assert len(rows) == 25
    assert rows["image"].str.startswith(f"{s3_prefix}/photos/images/").all()
    assert (rows.loc[rows["country_code"] == "SG", "split"] == "test").all()
    assert len(read_prepared(output, "test")) == (rows["split"] == "test").sum()
    assert s3_server.fs.exists(f"{output}/_SUCCESS.json")
    assert len(read_rejects(output)) == 2


def _big_manifest(folder: Path, files: int, rows_per_file: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(files):
        ids = [f"p{k}-{i}" for i in range(rows_per_file)]
        frame = pd.DataFrame({"id": ids, "image": ids, "lat": rng.uniform(-50, 60, rows_per_file).round(5),
                              "lon": rng.uniform(-120, 140, rows_per_file).round(5)})  # fmt: skip
        frame.to_csv(folder / f"part-{k}.csv", index=False)


def _shards(output: Path) -> list[Path]:
    return sorted((output / "data").glob("*.parquet")) if (output / "data").is_dir() else []


def _process_tree(pid: int) -> list:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_a_killed_run_leaves_no_completion_marker_and_the_next_run_starts_clean(ray_cluster, tmp_path):
    _big_manifest(tmp_path / "big", files=6, rows_per_file=60_000)
    output = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, killed with it
    command = [
        sys.executable,
        "-m",
        "flows",
        "prepare",
        "--manifest",
        str(tmp_path / "big"),
        "--output",
        str(output),
    ]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _shards(output):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no shard was written within 120 s"
            time.sleep(0.05)
        tree = _process_tree(proc.pid)  # the driver, its Ray cluster and workers: a crashed node
        for process in tree:
            process.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert len(_shards(output)) < 6  # killed mid-way
    assert not (output / "_SUCCESS.json").exists() and not (output / "stats.json").exists()
    stats = _prepare(tmp_path / "big", output).stats
    assert stats["rows_in"] == stats["rows_out"] == 360_000  # nothing of the killed run is left
    assert read_prepared(str(output), columns=["id"]).num_rows == 360_000


def test_cli_errors_are_one_line(ray_cluster, tmp_path, capsys):
    manifest = FIXTURES / "im2gps3k.csv"
    base = ["prepare", "--manifest", str(manifest), "--output", str(tmp_path / "out")]
    cases = [
        (["prepare.splits={train: 0.5}"], "prepare.splits"),
        (["prepare.bogus=1"], "unknown key 'prepare.bogus'"),
        (["--lat-col", "latitude", "--id-col", "image_id"], "has no column --lat-col 'latitude'"),
        (["prepare.holdout_countries=[nz]"], "ISO alpha-2"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert main(["prepare", "--output", str(tmp_path / "out")]) == 2
    assert "no manifest" in capsys.readouterr().err
    assert not (tmp_path / "out" / "_SUCCESS.json").exists()


def test_tracking_logs_stats_rejects_and_the_output_dataset(ray_cluster, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    folder = _streetscapes_copy(tmp_path / "streetscapes")
    output = tmp_path / "out"
    stats = _prepare(folder / "manifest.csv", output, f"tracking.uri={mlflow_server}",
                     "tracking.experiment=prepare-test", "prepare.check_images=true").stats  # fmt: skip
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("prepare-test")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["rows_in"] == stats["rows_in"] == 27
    assert run.data.metrics["rejected_image_missing"] == 1
    assert run.data.params["prepare.check_images"] == "True"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "prepare")}
    assert artifacts == {"prepare/stats.json", "prepare/rejects_sample.csv"}
    sample = client.download_artifacts(run.info.run_id, "prepare/rejects_sample.csv", str(tmp_path))
    assert sorted(pd.read_csv(sample)["reason"]) == ["image_missing", "image_undecodable"]
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "prepared" and str(output) in dataset_input.dataset.source
