"""Scrape techno from YouTube playlists into raw audio files plus a manifest.

A resumable, shardable batch job: run it again and it fetches only what is missing;
run N copies with --shard 0/N .. N-1/N (or as a Kubernetes Indexed Job, where the
shard defaults from JOB_COMPLETION_INDEX and TECHNOGAN_SHARD_COUNT) and each video
is fetched by exactly one of them. Exit status 0 when the share of failures stays
within scrape.max_failure_share; above it 1 when some failures were transient (a
retried pod may fix them) and 3 when all were permanent (private, removed, ...:
retrying cannot help); 2 for a usage error.
You are responsible for having the rights to the audio you download and for
respecting the site's terms of service.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Optional

from pipeline.config import add_config_argument, config_from_args
from pipeline.errors import UserError
from pipeline.scrape.backends import BACKENDS, Backend, make_backend
from pipeline.scrape.playlists import load_playlists
from pipeline.scrape.loop import scrape
from pipeline.shard import parse_shard

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--playlists", required=True, help="YAML file of playlist / video URLs (see configs/playlists.example.yaml)")
    p.add_argument("--out", required=True, help="output folder: audio/ and manifest*.jsonl")
    p.add_argument("--backend", choices=sorted(BACKENDS), help="downloader (default: the config's scrape.backend)")
    p.add_argument("--shard", help="I/N: this pod's slice (default: JOB_COMPLETION_INDEX / TECHNOGAN_SHARD_COUNT, else 0/1)")
    p.add_argument("--max-tracks", type=int, help="take at most N eligible videos over all playlists")
    p.add_argument("--dry-run", action="store_true", help="list and filter, print the plan, download nothing")
    p.add_argument("--retry-failed", action="store_true", help="also retry videos that failed permanently before")
    add_config_argument(p, "whose scrape: section sets retries, timeouts, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs of a Job)")


def _terminate(signum: int, frame: object) -> None:
    # Kubernetes stops a pod with SIGTERM: unwind like Ctrl-C so the temp file is removed
    raise KeyboardInterrupt


def main(args: argparse.Namespace, backend: Optional[Backend] = None) -> int:
    """Run the stage; ``backend`` overrides ``--backend`` (tests pass a fake one)."""
    config = config_from_args(args).scrape
    if args.backend:
        config = config.model_copy(update={"backend": args.backend})
    if args.max_tracks is not None and args.max_tracks < 1:
        raise UserError(f"--max-tracks must be >= 1, got {args.max_tracks}")
    try:
        shard = parse_shard(args.shard)
    except ValueError as e:
        raise UserError(str(e)) from None
    entries = load_playlists(args.playlists)
    backend = backend or make_backend(config.backend, config)
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        summary = scrape(entries, args.out, backend, config, shard, max_tracks=args.max_tracks,
                         dry_run=args.dry_run, retry_failed=args.retry_failed, progress=not args.no_progress)
    finally:  # a caller in the same process (a test, a notebook) gets its own handling back
        if previous is not None:  # None: set outside Python, nothing to restore from here
            signal.signal(signal.SIGTERM, previous)
    status = summary.exit_status(config.max_failure_share)
    ok = status == 0
    head = "dry run: would fetch" if args.dry_run else ("scrape finished" if ok else "scrape FAILED")
    print(f"\n{head} (shard {shard}, backend {backend.name}, out {args.out})")
    print(summary.format(config.max_failure_share))
    if args.dry_run:
        # nothing downloaded, so only the listing can fail: when no playlist could be
        # listed the plan is empty for a reason the caller must see
        return status if summary.listing_failures and not summary.unique else 0
    if not ok:
        why = "some were transient: a retry may help" if status == 1 else "all permanent: a retry will not help"
        print(f"technogan scrape: failure share {summary.failure_share:.1%} is above scrape.max_failure_share "
              f"{config.max_failure_share:.1%} ({why})", file=sys.stderr)
    return status


if __name__ == "__main__":
    from pipeline.cli import main as cli_main

    sys.exit(cli_main(["scrape", *sys.argv[1:]]))
