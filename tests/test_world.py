"""The synthetic world: the project's manifest columns, deterministic, learnable from pixels,
graded ambiguity."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.cli import main
from geor_core.data.world import MARKER_PX, STATES_PER_COUNTRY, WorldSpec, build_world, choose_places
from geor_core.geo.gazetteer import lookup
from geor_core.ownership import RECORD_NAME


def _files(root: Path) -> dict[str, bytes]:
    """The world's files (not the ownership record, which holds the time it was claimed)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != RECORD_NAME)
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _pixels(root: Path, manifest: pd.DataFrame) -> np.ndarray:
    return np.stack([np.asarray(Image.open(root / image), dtype=np.float32) for image in manifest["image"]])


def test_world_is_deterministic_for_a_seed(tmp_path):
    spec = WorldSpec(rows=120, countries=3, seed=7, ambiguous_share=0.3)
    build_world(str(tmp_path / "a"), spec)
    build_world(str(tmp_path / "b"), spec)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == 120 + 2  # images, manifest, marker
    assert first == second
    build_world(str(tmp_path / "c"), WorldSpec(rows=120, countries=3, seed=8))
    other = _files(tmp_path / "c")
    assert other["manifest.csv"] != first["manifest.csv"]


def test_world_manifest_follows_the_design(world_dir):
    from geor_core.config import load_config

    cfg = load_config("test")
    manifest = pd.read_csv(world_dir / "manifest.csv")
    assert list(manifest.columns[:4]) == ["id", "image", "lat", "lon"]
    assert len(manifest) == cfg.data.world_rows and manifest["id"].is_unique
    assert all((world_dir / image).is_file() for image in manifest["image"])
    with Image.open(world_dir / manifest["image"].iloc[0]) as image:
        assert image.format == "JPEG" and image.size == (cfg.data.world_image_size,) * 2
    assert json.loads((world_dir / "_SUCCESS.json").read_text())["rows"] == cfg.data.world_rows

    # The gazetteer reads each photo's coordinates back to the place drawn in it.
    labels = lookup(manifest["lat"].to_numpy(), manifest["lon"].to_numpy())
    assert np.all(labels["distance_km"] < 1e-6)
    countries = pd.Series(labels["country_code"])
    assert countries.nunique() == cfg.data.world_countries
    states = pd.DataFrame({"cc": labels["country_code"], "admin1": labels["admin1"]}).drop_duplicates()
    assert states.groupby("cc").size().max() <= STATES_PER_COUNTRY
    assert countries.value_counts().min() > len(manifest) / cfg.data.world_countries / 2  # balanced

    # Split by settlement: a place has one split, so test places are unseen in training.
    place = manifest["lat"].astype(str) + "," + manifest["lon"].astype(str)
    assert (manifest.groupby(place)["world_split"].nunique() == 1).all()
    assert set(manifest["world_split"]) == {"train", "val", "test"}
    assert (manifest["world_ambiguity"] == "none").all()  # the test preset has no ambiguity


def test_world_is_learnable_from_pixels(world_dir):
    """A linear classifier on 4x-downsampled pixels tells countries apart on unseen places."""
    from sklearn.linear_model import LogisticRegression

    manifest = pd.read_csv(world_dir / "manifest.csv")
    pixels = _pixels(world_dir, manifest)
    n, h, w, c = pixels.shape
    features = pixels.reshape(n, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4)).reshape(n, -1) / 255.0
    country = lookup(manifest["lat"].to_numpy(), manifest["lon"].to_numpy())["country_code"]
    train = (manifest["world_split"] == "train").to_numpy()
    test = ~train  # val and test places: never seen in training
    classifier = LogisticRegression(max_iter=300).fit(features[train], country[train])
    accuracy = float((classifier.predict(features[test]) == country[test]).mean())
    values, counts = np.unique(country[train], return_counts=True)
    majority = float((country[test] == values[counts.argmax()]).mean())
    print(
        f"country accuracy on {int(test.sum())} rows of unseen places: {accuracy:.3f} (majority class: {majority:.3f})"
    )
    assert accuracy >= 0.9 and accuracy >= majority + 0.4

    # The marker's column follows longitude inside each country.
    darkest = pixels.mean(axis=3).reshape(n, h, w).min(axis=1).argmin(axis=1)
    for code in np.unique(country):
        rows = country == code
        assert np.corrcoef(darkest[rows], manifest["lon"].to_numpy()[rows])[0, 1] > 0.9, code


def test_ambiguous_photos_lose_the_marker_or_the_state_texture(tmp_path):
    build_world(str(tmp_path), WorldSpec(rows=400, countries=3, seed=1, ambiguous_share=0.5))
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    kinds = manifest["world_ambiguity"].value_counts()
    assert 0.4 < 1 - kinds["none"] / len(manifest) < 0.6
    assert kinds["no_marker"] > 50 and kinds["faint_state"] > 50
    gray = _pixels(tmp_path, manifest).mean(axis=3)
    # darkest MARKER_PX x MARKER_PX block: the marker where there is one
    blocks = np.lib.stride_tricks.sliding_window_view(gray, (MARKER_PX, MARKER_PX), axis=(1, 2)).mean(
        axis=(3, 4)
    )
    darkest_block = blocks.reshape(len(gray), -1).min(axis=1)
    stripe_energy = (
        np.abs(np.fft.rfft2(gray - gray.mean(axis=(1, 2), keepdims=True))).reshape(len(gray), -1).max(1)
    )
    kind = manifest["world_ambiguity"].to_numpy()
    assert darkest_block[kind == "no_marker"].min() > darkest_block[kind != "no_marker"].max() + 20
    assert stripe_energy[kind == "faint_state"].max() < stripe_energy[kind == "none"].min()


LOOKS = (("CA", 0.6), ("SE", 0.4)), (("BR", 0.7), ("NG", 0.3))


def test_shared_looks_hide_the_country_behind_one_colour_with_the_looks_odds(tmp_path):
    codes = ("CA", "SE", "BR", "NG")
    spec = WorldSpec(rows=600, countries=4, country_codes=codes, shared_looks=LOOKS, shared_look_share=0.5)
    summary = build_world(str(tmp_path), spec)
    manifest = pd.read_csv(tmp_path / "manifest.csv", keep_default_na=False)
    country = pd.Series(lookup(manifest["lat"].to_numpy(), manifest["lon"].to_numpy())["country_code"])
    looks = manifest["world_look"][manifest["world_look"] != ""].value_counts().to_dict()
    assert set(country) == set(codes) and summary["looks"] == looks
    shared = manifest["world_ambiguity"] == "shared_look"
    assert 0.42 < shared.mean() < 0.58
    assert (manifest["world_group"] == np.where(shared, "ambiguous", "clean")).all()
    pixels = _pixels(tmp_path, manifest)
    colour = pixels.mean(axis=(1, 2))  # the look's flat colour (noise averages out)
    for look in LOOKS:
        name = "+".join(code for code, _ in look)
        rows = (manifest["world_look"] == name).to_numpy()
        in_look = country[rows].value_counts(normalize=True)
        for code, weight in look:  # each country's share of the look's photos is its weight
            assert abs(in_look[code] - weight) < 0.1, (name, in_look)
        # one colour whatever the country, far from every clean photo's, and no marker
        assert np.ptp(colour[rows], axis=0).max() < 3.0
        assert np.abs(colour[~shared.to_numpy()][:, None] - colour[rows][None]).max(axis=2).min() > 10
        assert pixels[rows].min(axis=3).min(axis=(1, 2)).min() > 60  # the marker is RGB 15


def test_the_render_shift_is_its_own_manifest_and_leaves_the_world_unchanged(tmp_path):
    plain, shifted = (
        WorldSpec(rows=60, countries=2, seed=5),
        WorldSpec(rows=60, countries=2, seed=5, shifted_rows=20),
    )
    build_world(str(tmp_path / "plain"), plain)
    build_world(str(tmp_path / "shifted"), shifted)
    assert (
        _files(tmp_path / "plain")["images/world-s5-000007.jpg"]
        == (tmp_path / "shifted/images/world-s5-000007.jpg").read_bytes()
    )
    main_rows = pd.read_csv(tmp_path / "shifted/manifest.csv")
    extra = pd.read_csv(tmp_path / "shifted/shifted/manifest.csv")
    assert len(main_rows) == 60 and len(extra) == 20 and set(extra["world_group"]) == {"shifted"}
    assert not set(extra["id"]) & set(main_rows["id"])
    # the marker: lighter, and its flat 5 x 5 patch carries about twice the pixel noise
    for rows, folder, shade, noise in (
        (main_rows, "shifted", (0, 40), (4, 10)),
        (extra, "shifted/shifted", (50, 95), (12, 25)),
    ):
        gray = _pixels(tmp_path / folder, rows).mean(axis=3)
        windows = np.lib.stride_tricks.sliding_window_view(gray, (MARKER_PX, MARKER_PX), axis=(1, 2))
        windows = windows.reshape(len(gray), -1, MARKER_PX * MARKER_PX)
        darkest = windows[np.arange(len(gray)), windows.mean(axis=2).argmin(axis=1)]
        assert shade[0] < np.median(darkest.mean(axis=1)) < shade[1], folder
        assert noise[0] < np.median(darkest.std(axis=1)) < noise[1], folder


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shared_looks": ((("CA", 0.6), ("SE", 0.5)),), "shared_look_share": 0.3}, "sum to 1"),
        ({"shared_looks": ((("CA", 0.6), ("JP", 0.4)),), "shared_look_share": 0.3}, "one of country_codes"),
        ({"shared_looks": ((("CA", 1.0),),), "shared_look_share": 0.3}, "2\\+ countries"),
        ({"shared_looks": LOOKS}, "go together"),
        ({"shared_look_share": 0.3}, "go together"),
        ({"country_codes": ("CA", "CA", "SE", "NG")}, "distinct codes"),
    ],
)
def test_bad_shared_looks_are_clear_errors(changes, message):
    base = {"rows": 10, "countries": 4, "country_codes": ("CA", "SE", "BR", "NG")}
    with pytest.raises(ValueError, match=message):
        WorldSpec(**(base | changes))


def test_rebuild_skips_same_world_and_refuses_another(tmp_path):
    spec = WorldSpec(rows=30, countries=2, seed=0)
    assert "skipped" not in build_world(str(tmp_path), spec)
    assert build_world(str(tmp_path), spec)["skipped"] is True
    with pytest.raises(ValueError, match="another world"):
        build_world(str(tmp_path), WorldSpec(rows=31, countries=2, seed=0))
    assert build_world(str(tmp_path), WorldSpec(rows=31, countries=2, seed=0), overwrite=True)["rows"] == 31
    assert len(list((tmp_path / "images").iterdir())) == 31


def test_bad_world_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="at most"):
        choose_places(500, seed=0)
    with pytest.raises(ValueError, match="ambiguous_share"):
        WorldSpec(rows=10, ambiguous_share=1.5)
    with pytest.raises(ValueError, match=r"\['XX'\] cannot be in a world.*usable: AF"):
        choose_places(2, seed=0, country_codes=("CA", "XX"))


def test_make_world_command_writes_to_s3(s3_server, s3_prefix, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["geor"])
    output = f"{s3_prefix}/world"
    assert main(["make-world", "--output", output, "--rows", "40", "--countries", "2", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 40 and summary["countries"] == 2 and summary["seed"] == 3
    root = output.removeprefix("s3://")
    manifest = pd.read_csv(s3_server.fs.open(f"{root}/manifest.csv"))
    assert len(manifest) == 40
    assert s3_server.fs.exists(f"{root}/{manifest['image'].iloc[-1]}")
    assert s3_server.fs.exists(f"{root}/_SUCCESS.json")
