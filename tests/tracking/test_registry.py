"""tracking.registry against a real MLflow SQLite store in a temporary folder."""

from __future__ import annotations

import pytest

from pipeline.errors import UserError
from tests.tracking.eval_runs import make_run, store_uri
from tracking import registry


def test_register_alias_and_lookups(tmp_path):
    uri = store_uri(tmp_path)
    a = make_run(uri, "reg", tmp_path, model="dcgan1")
    b = make_run(uri, "reg", tmp_path, model="wgan-gp")
    assert registry.version_of_run(a, "m", uri) is None  # nothing registered yet
    with pytest.raises(UserError, match="champion"):
        registry.resolve_alias("champion", "m", uri)

    va = registry.register_generator(a, "m", "champion", uri, tags={"k": 1})
    assert va.status == "READY" and va.run_id == a
    assert registry.resolve_alias("champion", "m", uri).version == va.version
    vb = registry.register_generator(b, "m", "champion", uri)
    assert int(vb.version) == int(va.version) + 1
    assert registry.resolve_alias("champion", "m", uri).run_id == b
    # registering the same run again reuses its version
    assert registry.register_generator(a, "m", None, uri).version == va.version
    assert registry.resolve_alias("champion", "m", uri).run_id == b  # alias=None leaves it alone
    assert registry.version_of_run(a, "m", uri).version == va.version

    path, mv = registry.champion_checkpoint(tmp_path / "dl", "m", "champion", uri)
    assert path.is_file() and mv.run_id == b


def test_finished_runs_lists_only_finished(tmp_path):
    uri = store_uri(tmp_path)
    done = make_run(uri, "reg", tmp_path, metrics={"eval.fd_learned": 1.0, "epoch": 2.0})
    make_run(uri, "reg", tmp_path, status="FAILED")
    rows = registry.finished_runs("reg", uri)
    assert [r.run_id for r in rows] == [done]
    assert rows[0].model == "dcgan1" and rows[0].samples == "36" and rows[0].epochs == "2"
    assert rows[0].metrics["eval.fd_learned"] == 1.0
    assert registry.finished_runs("no-such-experiment", uri) == []
