"""Build ``technogan.mar``, the TorchServe archive of one generator.

    technogan package                       # the registry's champion (default)
    technogan package --alias champion      # the same, explicitly
    technogan package --run-id RUN_ID       # a training run's latest generator
    technogan package --checkpoint PATH     # a generator checkpoint file
    ... [--out model-store/] [--config FILE]

What goes into the archive (torch-model-archiver, zip format):

- ``generator.pt``: the generator checkpoint as training wrote it (``pipeline.checkpoint``:
  a state_dict plus its JSON meta, loadable with ``torch.load(..., weights_only=True)``,
  no pickled modules);
- ``technogan.json``: the description: model name, model config, latent size,
  resolution, mel config (copied from the checkpoint meta), the MLflow run id, the
  registry name/version/alias, the ``serve`` settings the handler applies (max n,
  body limit, wav gap, Griffin-Lim iterations ...), the weights' sha256 and the
  technogan version that packaged it;
- ``handler.py``: ``serving/handler.py``;
- ``model-config.yaml``: minWorkers/maxWorkers, batchSize, maxBatchDelay, responseTimeout.

The project's code is not copied in: TorchServe workers run with the Python of the
server, where the ``technogan`` distribution is installed, and the handler imports
``pipeline`` and ``serving`` from there (see serving/handler.py).

The archive's version is the registry version (``0`` for a checkpoint or run that is
not registered). Packaging is idempotent: when ``<out>/technogan.mar`` already holds
the same weights, description and settings, nothing is rebuilt.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from pipeline.config import RunConfig, ServeConfig, add_config_argument, load_config
from pipeline.errors import UserError
from pipeline.fsutil import sha256_file
from serving.server import ARCHIVE_NAME, MODEL_NAME

log = logging.getLogger(__name__)

WEIGHTS_FILE = "generator.pt"
DESCRIPTION_FILE = "technogan.json"  # the handler reads it from the unpacked archive
MODEL_CONFIG_FILE = "model-config.yaml"
HANDLER_FILE = Path(__file__).with_name("handler.py")
UNREGISTERED_VERSION = "0"


@dataclass
class Source:
    """Where the generator comes from: a local checkpoint plus what the registry knows of it."""

    checkpoint: Path
    version: str = UNREGISTERED_VERSION
    run_id: Optional[str] = None
    registry: dict[str, Any] = field(default_factory=dict)  # name, version, alias when registered


# ----------------------------------------------------------------------------- sources


def _from_checkpoint(value: str, tmp: Path, config: RunConfig) -> Source:
    path = Path(value)
    if not path.is_file():
        raise UserError(f"--checkpoint {path}: file not found")
    from pipeline.checkpoint import read_meta

    meta = read_meta(path)  # a foreign or truncated file is a UserError naming it
    return Source(checkpoint=path, run_id=meta.get("run_id"))


def _from_run(value: str, tmp: Path, config: RunConfig) -> Source:
    from tracking.runs import download_checkpoint

    path = download_checkpoint(value, "latest", dst=tmp / "run", uri=config.tracking.uri)
    return Source(checkpoint=path, run_id=value, **_registered_as(value, config))


def _from_alias(value: str, tmp: Path, config: RunConfig) -> Source:
    from tracking import registry
    from tracking.runs import download_checkpoint

    version = registry.resolve_alias(value, config.evaluate.registry_model, uri=config.tracking.uri)
    path = download_checkpoint(version.run_id, registry.version_checkpoint(version), dst=tmp / "alias",
                               uri=config.tracking.uri)
    return Source(checkpoint=path, version=str(version.version), run_id=version.run_id,
                  registry={"name": version.name, "version": str(version.version), "alias": value})


def _registered_as(run_id: str, config: RunConfig) -> dict[str, Any]:
    """Registry version/name of a run when it was registered (the newest one)."""
    try:
        from tracking import registry

        found = registry.version_of_run(run_id, config.evaluate.registry_model, uri=config.tracking.uri)
    except ImportError:
        found = None
    if found is None:
        return {}
    return {"version": str(found.version), "registry": {"name": found.name, "version": str(found.version)}}


# option name -> how to turn its value into a Source
SOURCES: dict[str, Callable[[str, Path, RunConfig], Source]] = {
    "checkpoint": _from_checkpoint,
    "run_id": _from_run,
    "alias": _from_alias,
}


# ----------------------------------------------------------------------------- archive


def model_config_yaml(serve: ServeConfig) -> str:
    """TorchServe's per-model settings (model-config.yaml inside the archive)."""
    return yaml.safe_dump({
        "minWorkers": serve.workers,
        "maxWorkers": serve.workers,  # one generator per worker; more than the cores only thrashes
        "batchSize": serve.batch_size,
        "maxBatchDelay": serve.max_batch_delay_ms,
        "responseTimeout": serve.response_timeout_s,
    }, sort_keys=False)


def describe(source: Source, serve: ServeConfig, weights_sha256: str) -> dict[str, Any]:
    """The archive's ``technogan.json``."""
    from pipeline.checkpoint import read_meta

    meta = read_meta(source.checkpoint)
    return {
        "model_name": MODEL_NAME,
        "version": source.version,
        "run_id": source.run_id or meta.get("run_id"),
        "registry": source.registry or None,
        "model": meta["model"],
        "model_config": meta["model_config"],
        "latent_dim": meta["latent_dim"],
        "resolution": meta["resolution"],
        "mel_config": meta["mel_config"],
        "checkpoint": {"source": str(source.checkpoint), "sha256": weights_sha256,
                       "step": meta.get("step"), "epoch": meta.get("epoch"), "created": meta.get("created")},
        "serve": serve.archived(),  # the handler validates it back into a ServeConfig
        "technogan_version": _version(),
    }


def _fingerprint(desc: dict[str, Any], serve: ServeConfig) -> dict[str, Any]:
    """What decides the archive's content: same fingerprint, same archive."""
    d = dict(desc)
    d["checkpoint"] = {"sha256": desc["checkpoint"]["sha256"]}
    d["model_config_yaml"] = model_config_yaml(serve)
    d["handler_sha256"] = sha256_file(HANDLER_FILE)
    return d


def read_description(archive: str | os.PathLike) -> dict[str, Any]:
    """``technogan.json`` of an existing archive."""
    with zipfile.ZipFile(archive) as z:
        return json.loads(z.read(DESCRIPTION_FILE))


def build_archive(source: Source, out_dir: str | os.PathLike, serve: ServeConfig, force: bool = False) -> Path:
    """Write ``<out_dir>/technogan.mar`` for ``source``; returns its path.

    The checkpoint is loaded first (meta against weights, one forward pass): a
    checkpoint that cannot serve is a UserError and the old archive stays. Built in a
    private temp folder (torch-model-archiver stages in ``$TMPDIR/<model name>`` and
    deletes it, so two builds at once must not share ``$TMPDIR``) and moved into place
    with a rename, so a reader never sees half an archive.
    """
    from pipeline.checkpoint import load_generator

    # the generator must load from these weights as its meta describes it, and make one
    # mel, before anything is written: a bad checkpoint never replaces a good archive
    load_generator(source.checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / ARCHIVE_NAME
    weights_sha = sha256_file(source.checkpoint)
    desc = describe(source, serve, weights_sha)
    fingerprint = _fingerprint(desc, serve)
    if final.is_file() and not force:
        try:
            old = read_description(final)
            if old.get("fingerprint") == fingerprint:
                log.info("%s is up to date (version %s, weights %s)", final, desc["version"], weights_sha[:12])
                return final
        except (zipfile.BadZipFile, KeyError, ValueError):
            pass  # unreadable or foreign archive: rebuild it
    desc["fingerprint"] = fingerprint
    desc["packaged_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    with tempfile.TemporaryDirectory(prefix=".package-", dir=out) as tmp_name:
        tmp = Path(tmp_name)
        stage = tmp / "stage"
        stage.mkdir()
        shutil.copyfile(source.checkpoint, stage / WEIGHTS_FILE)
        (stage / DESCRIPTION_FILE).write_text(json.dumps(desc, indent=2, sort_keys=True) + "\n")
        (stage / MODEL_CONFIG_FILE).write_text(model_config_yaml(serve))
        (tmp / "tmp").mkdir()
        (tmp / "export").mkdir()
        cmd = [
            _archiver(), "--model-name", MODEL_NAME, "--version", str(desc["version"]),
            "--serialized-file", str(stage / WEIGHTS_FILE),
            "--handler", str(HANDLER_FILE),
            "--extra-files", str(stage / DESCRIPTION_FILE),
            "--config-file", str(stage / MODEL_CONFIG_FILE),
            "--export-path", str(tmp / "export"), "--force",
        ]
        env = dict(os.environ, TMPDIR=str(tmp / "tmp"))
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        built = tmp / "export" / ARCHIVE_NAME
        with open(built, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(built, final)
    log.info("wrote %s: %s version %s (run %s, weights %s)", final, desc["model"], desc["version"],
             desc["run_id"], weights_sha[:12])
    return final


def package(config: RunConfig, out_dir: str | os.PathLike, *, checkpoint: Optional[str] = None,
            run_id: Optional[str] = None, alias: Optional[str] = None, force: bool = False) -> Path:
    """Resolve the generator (checkpoint, run or registry alias; champion by default) and archive it."""
    chosen = {k: v for k, v in {"checkpoint": checkpoint, "run_id": run_id, "alias": alias}.items() if v}
    if len(chosen) > 1:
        raise UserError(f"give one of --checkpoint, --run-id, --alias; got {', '.join(chosen)}")
    kind, value = next(iter(chosen.items())) if chosen else ("alias", config.evaluate.champion_alias)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".source-", dir=out) as tmp:
        source = SOURCES[kind](value, Path(tmp), config)
        return build_archive(source, out, config.serve, force=force)


def _archiver() -> str:
    exe = shutil.which("torch-model-archiver", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                       os.environ.get("PATH", "")]))
    if exe is None:
        raise UserError("torch-model-archiver is not installed (pip install torch-model-archiver==0.12.0)")
    return exe


def _version() -> Optional[str]:
    try:
        return metadata.version("technogan")
    except metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--alias", help="registry alias to package (default: the config's evaluate.champion_alias, "
                                     "champion)")
    src.add_argument("--run-id", help="an MLflow training run: its latest generator checkpoint")
    src.add_argument("--checkpoint", help="a generator checkpoint file (pipeline.checkpoint format)")
    p.add_argument("--out", default="model-store", help="model store folder (default: %(default)s)")
    add_config_argument(p, "for the serve/tracking sections")
    p.add_argument("--force", action="store_true", help="rebuild even when the archive is up to date")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    path = package(config, args.out, checkpoint=args.checkpoint, run_id=args.run_id, alias=args.alias,
                   force=args.force)
    desc = read_description(path)
    print(json.dumps({"archive": str(path), "model": desc["model"], "version": desc["version"],
                      "run_id": desc["run_id"], "resolution": desc["resolution"]}, indent=2))
    return 0
