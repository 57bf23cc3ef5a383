"""Serve ``<model-store>/technogan.mar`` with TorchServe in the foreground, until Ctrl-C.

    technogan serve [--model-store model-store] [--port 8080] [--config FILE]

Binds 127.0.0.1 only: inference on --port (default 8080; 0 is refused), management on port+1,
Prometheus metrics on port+2 (``/metrics``) and TorchServe's gRPC endpoints, which
technogan does not use but TorchServe always opens, on port+3 and port+4. The inference
port is the gate (``serving.gate``: POST /predictions/*, GET /ping, nothing else), in
this process; TorchServe's own inference API listens behind it on a free loopback port.
Token auth is disabled explicitly (``--disable-token-auth``), which is only acceptable
because nothing but this machine can reach those ports; containers run ``technogan gate``
on 0.0.0.0:8080 in front of TorchServe with ``serving/config.properties`` (loopback
binds), behind a NetworkPolicy, instead. Config snapshots are off (``--ncs``). Ctrl-C (or
SIGTERM) stops TorchServe and its workers and exits 0.

    curl -X POST http://127.0.0.1:8080/predictions/technogan \\
         -H 'Content-Type: application/json' -d '{"n": 4, "format": "png"}' -o mels.png
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.config import MelConfig, add_config_argument, load_config
from pipeline.errors import UserError
from serving.package import read_description
from serving.gate import stop_signals_interrupt
from serving.server import ARCHIVE_NAME, ModelLoadError, Ports, TorchServe

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-store", default="model-store", help="folder holding technogan.mar (default: %(default)s)")
    p.add_argument("--port", type=int, help="inference port (default: the config's serve.port, 8080); "
                                            "management is port+1, metrics port+2, (unused) gRPC port+3 and +4")
    add_config_argument(p, "for the serve section")
    p.add_argument("--workdir", help="TorchServe's logs and temp files (default: <model-store>/.torchserve)")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    # --port 0 is refused, not read as "unset": TorchServe needs five known ports (P..P+4)
    port = config.serve.port if args.port is None else args.port
    if not 1 <= port <= 65531:
        raise UserError(f"--port {port}: must be between 1 and 65531 (port+1 to port+4 are used too; "
                        "0 is not supported: pick a free port)")
    store = Path(args.model_store)
    archive = store / ARCHIVE_NAME
    if not archive.is_file():
        raise UserError(f"{archive}: not found; build it first with `technogan package --out {store}`")
    desc = read_description(archive)
    server = TorchServe(store, Path(args.workdir) if args.workdir else store / ".torchserve", config.serve,
                        MelConfig.from_dict(desc["mel_config"]), Ports.from_base(port), bind="127.0.0.1",
                        foreground_output=True)
    log.warning("token auth is DISABLED (--disable-token-auth): TorchServe listens on 127.0.0.1 only, "
                "for local use; do not expose these ports")
    with stop_signals_interrupt():
        try:
            try:
                server.start()
            except ModelLoadError as e:  # the worker's own error, not TorchServe's restart loop
                raise UserError(f"{archive}: {e}") from None
            except RuntimeError as e:  # exited or never ready: the message carries TorchServe's log tail
                raise UserError(f"TorchServe did not start (is port {port}, {port + 1} or {port + 2} taken?)\n{e}") from None
            print(f"\ntechnogan {desc['model']} (registry version {desc['version']}, run {desc['run_id']}) is served:\n"
                  f"  predictions  POST {server.predictions_url} (through the gate; TorchServe itself on "
                  f"{server.direct_url})\n"
                  f"  management   {server.management_url}/models/technogan\n"
                  f"  metrics      {server.metrics_url}\n"
                  f"  logs         {server.workdir / 'logs'}\n"
                  f"Ctrl-C stops it.\n", flush=True)
            code = server.wait()
            log.error("TorchServe exited on its own with code %s", code)
            return 1
        except KeyboardInterrupt:
            log.info("stopping TorchServe")
            return 0
        finally:
            server.stop()
