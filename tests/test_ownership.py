"""geor writes and deletes only in folders it owns: every command claims its output first
(geor_core/ownership.py). Foreign folders and outputs that hold the run's inputs are refused before
anything is written, deleted or started; the project's own outputs (older ones too) keep working."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from flows.cli import main
from geor_core import uris
from geor_core.errors import UserFacingError
from geor_core.ownership import RECORD_NAME, claim_output

WORLD = ["--rows", "30", "--countries", "2", "--seed", "0"]


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["geor"])


def _foreign(folder: Path) -> dict[str, bytes]:
    """A user's folder: a note and a data file; returns its contents to compare later."""
    (folder / "data").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "data" / "mine.csv").write_text("a,b\n1,2\n")
    return _contents(folder)


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _record(folder: Path) -> dict:
    return json.loads((folder / RECORD_NAME).read_text())


@pytest.fixture
def ray_connects(monkeypatch) -> list[str]:
    """Records every connection to Ray a command makes (and makes none), whether or not the
    session's shared cluster is up already."""
    import tasks.ray_session

    calls: list[str] = []
    monkeypatch.setattr(tasks.ray_session, "connect_ray", lambda: calls.append("connect_ray") or False)
    return calls


def _fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / uris.MARKER_NAME).write_text("{}")
    return folder


def test_prepare_refuses_an_output_that_holds_its_manifest_and_deletes_nothing(tmp_path, capsys):
    project = tmp_path / "proj"
    (project / "data").mkdir(parents=True)
    manifest = project / "data" / "m.csv"
    manifest.write_text("id,image,lat,lon\n" + "".join(f"p{i},p{i}.jpg,{48 + i},{2 + i}\n" for i in range(5)))
    (project / "notes.txt").write_text("my notes\n")
    before = _contents(project)
    assert main(["prepare", "--manifest", str(manifest), "--output", str(project)]) == 2
    error = capsys.readouterr().err
    assert f"output {project} contains the manifest {manifest}" in error
    assert _contents(project) == before


def test_prepare_refuses_a_foreign_non_empty_output(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image,lat,lon\na,a.jpg,48.85,2.35\n")
    before = _foreign(tmp_path / "out")
    assert main(["prepare", "--manifest", str(manifest), "--output", str(tmp_path / "out")]) == 2
    assert f"output {tmp_path / 'out'} is not empty and geor did not write it" in capsys.readouterr().err
    assert _contents(tmp_path / "out") == before


@pytest.mark.parametrize("command", ["make-tiny-model", "make-world"])
def test_builders_refuse_a_foreign_non_empty_output(tmp_path, capsys, command):
    output = tmp_path / "mine"
    before = _foreign(output)
    assert main([command, "--output", str(output), "--overwrite", "--config", "test"]) == 2
    assert f"output {output} is not empty and geor did not write it" in capsys.readouterr().err
    assert _contents(output) == before


def test_make_world_rerun_and_overwrite_touch_only_its_own_entries(tmp_path, capsys):
    output = tmp_path / "world"
    assert main(["make-world", "--output", str(output), *WORLD]) == 0
    assert _record(output)["command"] == "make-world"
    (output / "notes.txt").write_text("mine\n")  # a user's file beside the world
    assert main(["make-world", "--output", str(output), *WORLD]) == 0  # re-run: skipped
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["skipped"] is True
    assert main(["make-world", "--output", str(output), *WORLD[:-1], "1", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["seed"] == 1
    assert (output / "notes.txt").read_text() == "mine\n"
    assert len(list((output / "images").iterdir())) == 30


def test_an_output_of_an_older_geor_is_still_accepted(tmp_path, capsys):
    """Outputs made before ownership records existed carry only their completion marker."""
    output = tmp_path / "world"
    assert main(["make-world", "--output", str(output), *WORLD]) == 0
    (output / RECORD_NAME).unlink()
    assert (
        main(["make-world", "--output", str(output), "--rows", "31", "--countries", "2", "--overwrite"]) == 0
    )
    assert _record(output)["written_by_older_geor"] is True
    assert len(list((output / "images").iterdir())) == 31


def test_make_tiny_model_overwrite_in_its_own_folder_keeps_other_files(tmp_path, capsys, monkeypatch):
    from geor_core.training import tiny_model

    def save(directory, min_pixels, max_pixels, seed=0):  # the real build takes 10-25 s on 2 cores
        (Path(directory) / "config.json").write_text(json.dumps({"seed": seed}))
        (Path(directory) / f"weights-{seed}.safetensors").write_bytes(b"w")
        return {"parameters": 1, "vocab_size": 1}

    monkeypatch.setattr(tiny_model, "save_tiny_model", save)
    output = tmp_path / "tiny"
    assert main(["make-tiny-model", "--output", str(output)]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == ["config.json", "weights-0.safetensors"]
    assert _record(output)["command"] == "make-tiny-model"
    (output / "notes.txt").write_text("mine\n")
    assert main(["make-tiny-model", "--output", str(output), "--seed", "1", "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 1
    assert sorted(p.name for p in output.iterdir()) == [
        RECORD_NAME,
        "_SUCCESS.json",
        "config.json",
        "notes.txt",
        "weights-1.safetensors",
    ]  # the previous build's files are replaced, the user's note is kept
    assert json.loads((output / "config.json").read_text()) == {"seed": 1}


def test_a_folder_of_another_command_is_refused(tmp_path, capsys):
    output = tmp_path / "world"
    assert main(["make-world", "--output", str(output), *WORLD]) == 0
    before = _contents(output)
    assert main(["make-tiny-model", "--output", str(output), "--overwrite"]) == 2
    assert f"output {output} belongs to `geor make-world`" in capsys.readouterr().err
    assert _contents(output) == before


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_training_refuses_an_output_that_is_or_holds_the_model_before_ray(
    tmp_path, capsys, stage, ray_connects
):
    model = _fake_model(tmp_path / "run" / "model")
    before = _contents(tmp_path / "run")
    data = str(tmp_path / "prepared")
    for output, relation in ((model, "is"), (model.parent, "contains")):
        argv = [stage, "--data", data, "--model", str(model), "--output", str(output), "--overwrite"]
        assert main(argv) == 2
        assert f"output {output} {relation} the model {model}" in capsys.readouterr().err
    assert _contents(tmp_path / "run") == before
    assert not ray_connects, "Ray was reached before the output was checked"


def test_sweep_refuses_a_foreign_output_before_ray_and_writes_nothing(tmp_path, capsys, ray_connects):
    output = tmp_path / "sweep"
    before = _foreign(output)
    space = tmp_path / "space.yaml"
    space.write_text("grpo.beta: [0.0, 0.04]\n")
    model = _fake_model(tmp_path / "model")
    argv = ["sweep", "--data", str(tmp_path / "prepared"), "--model", str(model), "--output", str(output)]
    assert main([*argv, "--space", str(space), "--overwrite"]) == 2
    assert f"output {output} is not empty and geor did not write it" in capsys.readouterr().err
    assert _contents(output) == before
    assert not ray_connects, "Ray was reached before the output was checked"


def test_predict_refuses_an_output_that_is_its_images_folder(tmp_path, capsys):
    model = _fake_model(tmp_path / "model")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8\xff")
    argv = ["predict", "--model", str(model), "--images", str(photos), "--output", str(photos)]
    assert main(argv) == 2
    assert f"output {photos} is the images {photos}" in capsys.readouterr().err
    assert not (photos / RECORD_NAME).exists()


def test_pipeline_refuses_a_foreign_root_before_anything_starts(tmp_path, capsys):
    root = tmp_path / "root"
    before = _foreign(root)
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image,lat,lon\na,a.jpg,48.85,2.35\n")
    model = _fake_model(tmp_path / "model")
    argv = ["pipeline", "--output", str(root), "--manifest", str(manifest), "--model", str(model)]
    assert main(argv) == 2
    assert f"output {root} is not empty and geor did not write it" in capsys.readouterr().err
    assert _contents(root) == before


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty base URI: a local folder, or a unique prefix on the moto S3 server."""
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_prefix")


def test_claim_on_local_paths_and_s3(base):
    owned = claim_output(uris.join(base, "new"), "evaluate")  # absent: claimed
    assert json.loads(uris.read_text(uris.join(base, "new", RECORD_NAME)))["command"] == "evaluate"
    uris.write_text(uris.join(base, "new", "models", "a.txt"), "x")
    uris.write_text(uris.join(base, "new", "keep.txt"), "x")
    owned.remove("models")
    assert not uris.exists(uris.join(base, "new", "models")) and uris.exists(
        uris.join(base, "new", "keep.txt")
    )
    assert claim_output(uris.join(base, "new"), "evaluate").uri == uris.join(base, "new")  # re-run
    uris.write_text(uris.join(base, "theirs", "notes.txt"), "x")
    with pytest.raises(UserFacingError, match="not empty and geor did not write it"):
        claim_output(uris.join(base, "theirs"), "evaluate")
    messy = base.replace("://", ":///", 1) + "//theirs/" if uris.is_s3(base) else base + "/./theirs/"
    with pytest.raises(UserFacingError, match="contains the data"):
        claim_output(base, "evaluate", inputs={"data": messy})
    assert uris.read_text(uris.join(base, "theirs", "notes.txt")) == "x"


def test_a_demo_root_is_a_pipeline_root_too_and_stage_records_vouch_for_stage_folders(tmp_path):
    root = str(tmp_path / "demo")
    claim_output(root, "demo")
    claim_output(root, "pipeline")  # `geor demo` runs the pipeline in its own root
    with pytest.raises(UserFacingError, match="belongs to `geor demo`"):
        claim_output(root, "make-world")
    crashed = tmp_path / "demo" / "prepared"  # a stage an older geor left half-written
    (crashed / "data").mkdir(parents=True)
    with pytest.raises(UserFacingError, match="geor did not write it"):
        claim_output(str(crashed), "prepare")
    claim_output(str(crashed), "prepare", adopt=True)  # the pipeline's stage record names it
    assert _record(crashed)["written_by_older_geor"] is True


def test_deletion_stays_inside_the_owned_folder(tmp_path, monkeypatch):
    owned = claim_output(str(tmp_path / "out"), "predict")
    for entry in ("", "..", "a/../../b", "/etc", RECORD_NAME):
        with pytest.raises(ValueError):
            owned.remove(entry)
    monkeypatch.chdir(tmp_path / "out")
    for too_wide in (str(tmp_path), str(tmp_path / "out"), os.path.expanduser("~"), "/", "s3://bucket"):
        with pytest.raises(ValueError, match="refusing to delete"):
            uris.remove_tree(too_wide)
    assert (tmp_path / "out" / RECORD_NAME).is_file()
