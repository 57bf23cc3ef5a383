"""technogan package: every source, the archive's contents, idempotence, user errors."""

from __future__ import annotations

import zipfile

import pytest

from pipeline.cli import main as cli_main
from serving.package import package, read_description


def test_package_from_run_id_is_registered_version(serve_run_config, trained_run, champion_version, tmp_path):
    path = package(serve_run_config, tmp_path, run_id=trained_run.run_id)
    desc = read_description(path)
    assert desc["run_id"] == trained_run.run_id
    assert desc["version"] == str(champion_version.version)  # the run is registered: its version


def test_package_from_checkpoint_is_idempotent(serve_run_config, trained_run, tmp_path):
    path = package(serve_run_config, tmp_path, checkpoint=str(trained_run.generator_path))
    desc = read_description(path)
    assert desc["version"] == "0" and desc["run_id"] == trained_run.run_id
    assert desc["checkpoint"]["source"] == str(trained_run.generator_path)
    before = path.stat().st_mtime_ns
    assert package(serve_run_config, tmp_path, checkpoint=str(trained_run.generator_path)) == path
    assert path.stat().st_mtime_ns == before  # nothing rebuilt
    changed = serve_run_config.model_copy(update={"serve": serve_run_config.serve.model_copy(update={"batch_size": 4})})
    package(changed, tmp_path, checkpoint=str(trained_run.generator_path))
    with zipfile.ZipFile(path) as z:
        assert "batchSize: 4" in z.read("model-config.yaml").decode()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_package_cli_errors(tmp_path, capsys):
    assert cli_main(["package", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 2
    assert "missing.pt: file not found" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert cli_main(["package", "--checkpoint", str(tmp_path / "junk.pt"), "--out", str(tmp_path)]) == 2
    assert "junk.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["package", "--checkpoint", "a", "--run-id", "b"])  # mutually exclusive
