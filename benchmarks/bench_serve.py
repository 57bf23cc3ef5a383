"""Benchmark serving: a real TorchServe against the same work done in-process.

Prints JSON. For each case (``json`` n=1, ``png`` n=16, ``wav`` n=1, a 5 s clip):

- ``in_process``: the handler's own work without TorchServe, one request at a time
  (interleaved with the ``served_c1`` requests, so both see the same machine load):
  parse the body, draw the latents, generator forward, encode the answer (JSON dump,
  plot, or Griffin-Lim render + WAV) with ``serving.engine.Engine``, same settings
  (Griffin-Lim iterations, torch threads) as the served archive;
- ``served_c1`` / ``served_c8``: HTTP POSTs to TorchServe over loopback from 1 and 8
  client threads (keep-alive sessions), timed until the whole body has arrived.

Each gives p50/p99 latency (ms) and requests per second. ``overhead_ms_p50`` is
served_c1 p50 minus in_process p50: what TorchServe and the gate (HTTP, queue, batching
delay, frontend <-> worker socket, response copy) add to one request.

``gate``: the same requests through the gate (``serving/gate.py``, what clients reach)
and straight to TorchServe's own inference port behind it, in the same run: at
concurrency 1 interleaved, at 8 and 32 in direct, gate, gate, direct rounds (averaged). ``p50_ratio`` and
``req_per_s_ratio`` are gate / direct (target: p50 ratio <= 1.1 for json n=1 at c1,
req/s ratio >= 0.9 at c32). Targets on a 2-core
machine: ``json`` overhead <= 15 ms; ``wav`` served_c1 p50 < 250 ms.

    python benchmarks/bench_serve.py [--config configs/quickstart.yaml] [--checkpoint PATH] [--quick]

Without ``--checkpoint`` a freshly initialised generator of the config's model is
used (weights do not change the cost).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import torch
import yaml

from pipeline.checkpoint import load_generator, save_generator
from pipeline.config import MelConfig, RunConfig, ServeConfig, load_config
from pipeline.models.registry import get_model
from serving.engine import Engine
from serving.package import package, read_description
from serving.request import Limits, parse_request
from serving.server import Ports, TorchServe

CASES = {  # name -> request body
    "json_n1": {"format": "json", "n": 1},
    "png_n16": {"format": "png", "n": 16},
    "wav_n1": {"format": "wav", "n": 1},
}


def summary(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "req_per_s": round(len(ms) / wall_s, 2), "requests": int(len(ms))}


def fresh_checkpoint(config: RunConfig, folder: Path) -> Path:
    torch.manual_seed(0)
    g = get_model(config.model.name).build_generator(config.model, config.data.resolution)
    meta = {"model": config.model.name, "model_config": config.model.model_dump(),
            "resolution": config.data.resolution, "latent_dim": config.model.latent_dim,
            "mel_config": config.mel.to_dict(), "run_id": None}
    return save_generator(folder / "generator-bench.pt", g, meta)


def run_once(engine: Engine, limits: Limits, raw: bytes) -> bytes:
    """What the handler does for one request, minus TorchServe."""
    request = parse_request(raw, limits)
    z, seed = engine.latents(request)
    mels = engine.generate(z)
    return engine.encode(request, mels, seed)


def bench_c1(engine: Engine, limits: Limits, url: str, body: dict, repeats: int) -> dict[str, dict]:
    """In-process and served one request at a time, interleaved so both see the same
    machine load (other processes come and go on a shared box)."""
    raw = json.dumps(body).encode()
    session = requests.Session()

    def served() -> float:
        return timed_post(session, url, raw)

    def local() -> float:
        t = time.perf_counter()
        run_once(engine, limits, raw)
        return time.perf_counter() - t

    for _ in range(2):  # warm-up: filterbanks, matplotlib fonts, keep-alive connection
        local(), served()
    lat_local, lat_served = [], []
    for _ in range(repeats):
        lat_local.append(local())
        lat_served.append(served())
    return {"in_process": summary(lat_local, sum(lat_local)), "served_c1": summary(lat_served, sum(lat_served))}


def timed_post(session: requests.Session, url: str, data: bytes) -> float:
    """Seconds for one JSON POST, body read in full; raises on anything but 200."""
    t = time.perf_counter()
    r = session.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=300)
    _ = r.content
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    return time.perf_counter() - t


def bench_concurrent(url: str, body: dict, repeats: int, concurrency: int) -> dict[str, float]:
    """``repeats`` requests from ``concurrency`` client threads, one keep-alive session each."""
    data = json.dumps(body).encode()
    tls = threading.local()

    def one(_: int) -> float:
        s = getattr(tls, "session", None)
        if s is None:
            s = tls.session = requests.Session()
        return timed_post(s, url, data)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm-up: a session per thread
        t0 = time.perf_counter()
        lat = list(pool.map(one, range(repeats)))
        wall = time.perf_counter() - t0
    return summary(lat, wall)


def ratios(gate: dict[str, float], direct: dict[str, float]) -> dict[str, float]:
    return {"p50_ratio": round(gate["p50_ms"] / direct["p50_ms"], 3),
            "req_per_s_ratio": round(gate["req_per_s"] / direct["req_per_s"], 3)}


def bench_gate(gate_url: str, direct_url: str, body: dict, repeats: int) -> dict[str, dict]:
    """Through the gate vs straight to TorchServe: c1 interleaved, then c8 and c32."""
    raw = json.dumps(body).encode()
    sessions = {"gate": requests.Session(), "direct": requests.Session()}
    urls = {"gate": gate_url, "direct": direct_url}
    for _ in range(2):
        for k in urls:
            timed_post(sessions[k], urls[k], raw)
    lat: dict[str, list[float]] = {"gate": [], "direct": []}
    for _ in range(repeats):
        for k in urls:
            lat[k].append(timed_post(sessions[k], urls[k], raw))
    c1 = {k: summary(v, sum(v)) for k, v in lat.items()}
    out: dict[str, dict] = {"c1": {**c1, **ratios(c1["gate"], c1["direct"])}}
    for c in (8, 32):
        # direct, gate, gate, direct: neither side always runs first (warmer, or under other load)
        rounds: dict[str, list[dict[str, float]]] = {"direct": [], "gate": []}
        for k in ("direct", "gate", "gate", "direct"):
            rounds[k].append(bench_concurrent(urls[k], body, max(repeats, 2 * c), c))
        runs = {k: {m: round(sum(r[m] for r in v) / len(v), 2) for m in v[0]} for k, v in rounds.items()}
        out[f"c{c}"] = {**runs, **ratios(runs["gate"], runs["direct"])}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--checkpoint", help="generator checkpoint (default: freshly initialised)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set serve.max_batch_delay_ms=1 (YAML value)")
    args = p.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    config = load_config(args.config if Path(args.config).is_file() else None, overrides)
    reps = {"json_n1": 60, "png_n16": 6, "wav_n1": 20} if not args.quick else {"json_n1": 10, "png_n16": 2, "wav_n1": 4}

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = Path(args.checkpoint) if args.checkpoint else fresh_checkpoint(config, tmp)
        archive = package(config, tmp / "store", checkpoint=str(checkpoint))
        desc = read_description(archive)

        # in-process: the handler's engine with the archive's own settings (torch threads too)
        settings = ServeConfig.model_validate(desc["serve"])
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        generator, meta = load_generator(checkpoint)
        engine = Engine(generator, meta, settings)
        limits = Limits.of(settings, engine.latent_dim)
        results: dict[str, dict] = {}
        with TorchServe(tmp / "store", tmp / "ts", config.serve, MelConfig.from_dict(desc["mel_config"]),
                        Ports.free()) as server:
            for name, body in CASES.items():
                results[name] = bench_c1(engine, limits, server.predictions_url, body, reps[name])
                results[name]["served_c8"] = bench_concurrent(server.predictions_url, body, max(reps[name], 16), 8)
                results[name]["overhead_ms_p50"] = round(
                    results[name]["served_c1"]["p50_ms"] - results[name]["in_process"]["p50_ms"], 2)
            gate = {name: bench_gate(server.predictions_url, f"{server.direct_url}/predictions/technogan",
                                     CASES[name], reps[name]) for name in ("json_n1", "wav_n1")}

    report = {
        "benchmark": "serve",
        "machine": {"cpus": os.cpu_count(),
                    "torch": torch.__version__},
        "model": {"name": desc["model"], "resolution": desc["resolution"], "latent_dim": desc["latent_dim"],
                  "g_width": desc["model_config"].get("g_width")},
        "serve": {k: getattr(config.serve, k) for k in ("workers", "batch_size", "max_batch_delay_ms",
                                                        "render_iterations", "render_mel_inverse",
                                                        "render_nnls_steps", "torch_threads")},
        "load_average_1m": round(os.getloadavg()[0], 2),  # other processes on the box skew every figure
        "cases": results,
        "gate": gate,
        "targets": {
            "gate_json_c1_p50_ratio": gate["json_n1"]["c1"]["p50_ratio"],
            "gate_json_c1_ok": gate["json_n1"]["c1"]["p50_ratio"] <= 1.1,
            "gate_json_c32_req_per_s_ratio": gate["json_n1"]["c32"]["req_per_s_ratio"],
            "gate_json_c32_ok": gate["json_n1"]["c32"]["req_per_s_ratio"] >= 0.9,
            "json_overhead_ms_p50": results["json_n1"]["overhead_ms_p50"],
            "json_overhead_ok": results["json_n1"]["overhead_ms_p50"] <= 15.0,
            "wav_n1_served_p50_ms": results["wav_n1"]["served_c1"]["p50_ms"],
            "wav_n1_ok": results["wav_n1"]["served_c1"]["p50_ms"] < 250.0,
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
