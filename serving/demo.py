"""The main job's last step: package the champion, serve it, ask for JSON, PNG and WAV.

``serve_demo(config, out)`` builds ``<out>/model-store/technogan.mar`` from the registry's
champion, starts a real TorchServe on free loopback ports (in ``<out>/served/torchserve``),
requests the three formats through ``serving.client``, saves them under ``<out>/served``
and stops the server. It is idempotent: when the saved answers came from the same
archive (``served.json`` records its sha256) nothing is started again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from pipeline.config import MelConfig, RunConfig
from pipeline.fsutil import atomic_write_bytes, atomic_write_text, sha256_file
from serving.client import Client
from serving.package import package, read_description
from serving.server import Ports, TorchServe

log = logging.getLogger(__name__)

SEED = 0  # the demo's requests are reproducible
FILES = {"json": "mels.json", "png": "mels.png", "wav": "clips.wav"}
RECORD = "served.json"


def serve_demo(config: RunConfig, out: str | Path, expected_run_id: Optional[str] = None) -> dict[str, Path]:
    """Package, serve, request, save, stop; returns {label: path} of what was written."""
    out = Path(out)
    served = out / "served"
    archive = package(config, out / "model-store")
    desc = read_description(archive)
    if expected_run_id and desc["run_id"] != expected_run_id:
        log.warning("the registry's %s is run %s, not the run this job promoted (%s)",
                    config.evaluate.champion_alias, desc["run_id"], expected_run_id)
    archive_sha = sha256_file(archive)
    paths = {fmt: served / name for fmt, name in FILES.items()}
    record_path = served / RECORD
    if record_path.is_file() and all(p.is_file() for p in paths.values()):
        try:
            if json.loads(record_path.read_text()).get("archive_sha256") == archive_sha:
                log.info("served outputs in %s are up to date", served)
                return {"model archive": archive, **{f"served {k}": v for k, v in paths.items()}}
        except ValueError:
            pass

    mel = MelConfig.from_dict(desc["mel_config"])
    record: dict[str, Any] = {"archive": str(archive), "archive_sha256": archive_sha, "version": desc["version"],
                              "run_id": desc["run_id"], "model": desc["model"], "seed": SEED, "requests": {}}
    with TorchServe(archive.parent, served / "torchserve", config.serve, mel, Ports.free()) as server:
        client = Client(server.inference_url)
        requests_made = {
            "json": ({"n": 4, "seed": SEED}, lambda: client.request("json", n=4, seed=SEED).content),
            "png": ({"n": 16, "seed": SEED}, lambda: client.png(n=16, seed=SEED)),
            "wav": ({"n": 2, "seed": SEED}, lambda: client.wav(n=2, seed=SEED)),
        }
        for fmt, (body, call) in requests_made.items():
            data = call()
            atomic_write_bytes(paths[fmt], data)
            record["requests"][fmt] = {"body": {**body, "format": fmt}, "file": paths[fmt].name, "bytes": len(data)}
            log.info("POST %s %s -> %s (%d bytes)", server.predictions_url, json.dumps({**body, "format": fmt}),
                     paths[fmt], len(data))
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return {"model archive": archive, **{f"served {k}": v for k, v in paths.items()}}
