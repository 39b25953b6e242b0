"""`geor predict`: listing photos from a folder or a manifest (unit), and geolocating the real
streetscapes photos (640 px JPEGs) on the shared Ray cluster, written to S3 (moto)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from flows.commands import predict_command as predict_command
from geor_core import uris
from geor_core.data.photo_inputs import list_photos
from geor_core.errors import UserFacingError
from geor_core.scoring.predictions import PHOTO_SCHEMA
from tests.plugins.models import run_command
from tests.test_evaluate import assert_png

STREETSCAPES = Path(__file__).parent / "fixtures" / "streetscapes"


def test_folder_lists_every_image_recursively_skipping_hidden_files(tmp_path):
    for name in ("b.jpg", "a.PNG", "sub/c.jpeg", ".hidden.jpg", "_tmp/d.jpg", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    photos = list_photos(str(tmp_path))
    assert photos.column("id").to_pylist() == ["a.PNG", "b.jpg", "sub/c.jpeg"]
    assert photos.column("image").to_pylist()[2] == str(tmp_path / "sub" / "c.jpeg")


def test_manifest_references_are_relative_to_its_folder():
    photos = list_photos(str(STREETSCAPES / "manifest.csv"))
    manifest = pd.read_csv(STREETSCAPES / "manifest.csv")
    assert photos.num_rows == len(manifest) == 25
    assert photos.column("id").to_pylist() == manifest["image"].tolist()  # no id column: the reference
    assert all(Path(p).is_file() for p in photos.column("image").to_pylist())


def test_bad_photo_inputs_are_clear_errors(tmp_path):
    (tmp_path / "dup.csv").write_text("id,image\na,x.jpg\na,y.jpg\n")
    with pytest.raises(UserFacingError, match="ids appear more than once, e.g. 'a'"):
        list_photos(str(tmp_path / "dup.csv"))
    (tmp_path / "cols.csv").write_text("id,path\na,x.jpg\n")
    with pytest.raises(UserFacingError, match="no image column 'image'"):
        list_photos(str(tmp_path / "cols.csv"))
    assert list_photos(str(tmp_path / "cols.csv"), image_col="PATH").column("image").to_pylist() == [
        str(tmp_path / "x.jpg")
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserFacingError, match="holds no image files"):
        list_photos(str(tmp_path / "empty"))
    with pytest.raises(UserFacingError, match="does not exist"):
        list_photos(str(tmp_path / "nope"))


def test_cli_requires_images(capsys, tmp_path):
    assert main(["predict", "--model", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "--images is required" in capsys.readouterr().err


def test_predict_streetscapes_photos_to_s3(ray_cluster, sft_checkpoint, s3_prefix, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for photo in sorted((STREETSCAPES / "images").iterdir()):
        (images / photo.name).write_bytes(photo.read_bytes())
    (images / "broken.jpg").write_bytes(b"not a jpeg")  # a bad photo is a row with its reason
    argv = ["--model", sft_checkpoint.export_uri, "--images", str(images), "--output", s3_prefix,
            "--config", "test", "eval.max_new_tokens=96", "eval.rows_per_shard=8"]  # fmt: skip
    assert run_command(predict_command, argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["photos"] == 26 and summary["images_not_loaded"] == 1 and summary["shards_computed"] == 4

    csv = pd.read_csv(
        io.BytesIO(uris.read_bytes(uris.join(s3_prefix, "predictions.csv"))), keep_default_na=False
    )
    expected = sorted(p.name for p in images.iterdir())
    assert csv["id"].tolist() == expected
    assert list(csv.columns) == PHOTO_SCHEMA.names
    broken = csv[csv["id"] == "broken.jpg"].iloc[0]
    assert "cannot be decoded" in broken["inference_error"] and broken["parse_error"] == "empty"
    photos = csv[csv["id"] != "broken.jpg"]
    assert (photos["parse_error"] == "").mean() >= 0.9  # the SFT model answers in the CoR format
    assert summary["predicted"] == int((csv["lat"] != "").sum())
    parsed = pd.to_numeric(photos["lat"], errors="coerce").dropna()
    assert np.all(np.abs(parsed) <= 90)
    assert_png(uris.read_bytes(uris.join(s3_prefix, "world_map.png")))
    assert uris.read_marker(s3_prefix)["photos"] == 26

    again = run_command(predict_command, argv)  # finished shards are kept
    assert again == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["shards_skipped"] == 4
