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


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """A good archive of a tiny 32x32 dcgan1 (latent 16), and that checkpoint."""
    from pipeline.config import load_config
    from tests.tracking.eval_runs import make_checkpoint

    root = tmp_path_factory.mktemp("small_store")
    ckpt = make_checkpoint(root / "good.pt", resolution=32)
    store = root / "store"
    package(load_config(None), store, checkpoint=str(ckpt))
    return ckpt, store


@pytest.mark.slow
def test_package_refuses_every_crafted_checkpoint_and_keeps_the_good_archive(small_store, tmp_path, capsys):
    from tests.serving.crafted import CRAFTED, tamper

    ckpt, store = small_store
    archive = store / "technogan.mar"
    before = archive.read_bytes()
    for case, how in CRAFTED.items():
        bad = tamper(ckpt, tmp_path / f"{case}.pt", **how)
        for extra in ([], ["--force"]):
            code = cli_main(["package", "--checkpoint", str(bad), "--out", str(store), *extra])
            err = capsys.readouterr().err
            assert code == 2, f"{case}: exit {code}\n{err}"
            assert str(bad) in err and "Traceback" not in err, f"{case}: {err}"
            assert archive.read_bytes() == before, f"{case}: the good archive was replaced"
    assert sorted(p.name for p in store.iterdir()) == ["technogan.mar"]  # no temp files left


def test_package_loads_and_runs_the_generator_before_writing(small_store, tmp_path, monkeypatch):
    """The check is one forward pass: a generator whose output is not finite is refused."""
    import torch

    from pipeline.config import load_config
    from pipeline.errors import UserError
    from tests.serving.crafted import tamper

    ckpt, _ = small_store
    payload = torch.load(ckpt, weights_only=True)
    payload["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                             for k, v in payload["state_dict"].items()}
    torch.save(payload, tmp_path / "nan.pt")
    nan = tamper(tmp_path / "nan.pt", tmp_path / "nan2.pt")
    with pytest.raises(UserError, match="not finite"):
        package(load_config(None), tmp_path / "store", checkpoint=str(nan))
    assert not (tmp_path / "store" / "technogan.mar").exists()
