"""The MLflow UI as its users see it: a real `mlflow server` on loopback over a store of
real training runs, opened in headless Chromium.

The store is made by the demo's own code path (``pipeline.train.train`` for each model,
then what ``technogan promote`` does with its winner: ``tracking.registry.register_generator``
and the champion's ``promotion/listen.html`` from ``promote.champion_page``), on the
shared synthetic dataset, with tiny networks: the UI shows the same things for a tiny run
as for a long one. Evaluation, which only decides *which* run wins, is left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser import artifact_dir
from tests.tracking.test_runs_server import MlflowServer
from tracking import runs as tracking

EXPERIMENT = "technogan-ui"
MODELS = ("dcgan1", "wgan-gp")


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_dataset):
    """Two finished training runs and a champion, as the demo leaves them."""
    from pipeline.config import ListenConfig, load_config
    from pipeline.dataset import MelDataset
    from pipeline.evaluate.promote import champion_page
    from pipeline.train import train
    from tracking.registry import finished_runs, register_generator

    root = tmp_path_factory.mktemp("ui_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = {}
    for model in MODELS:
        config = load_config(None, {
            "model.name": model, "model.g_width": 4, "model.d_width": 4, "model.latent_dim": 8,
            "data.resolution": 32, "train.max_steps": 2, "train.batch_size": 2, "train.epochs": 1,
            "train.n_samples": 4, "train.device": "cpu", "train.progress": False,
            "tracking.uri": uri, "tracking.experiment": EXPERIMENT})
        result = train(config, dataset=small_dataset, out_dir=root / "train", label=model)
        assert result.status == "finished" and result.run_id, result
        runs[model] = result
    champion = register_generator(runs["dcgan1"].run_id, uri=uri)
    # the champion's page, as promote logs it (a small one: what is checked is that it is there)
    [winner] = [r for r in finished_runs(EXPERIMENT, uri) if r.run_id == runs["dcgan1"].run_id]
    page = champion_page(winner, "latest", str(champion.version), champion.name, "champion", "eval.fd_learned",
                         ["run"], [[winner.name]], ListenConfig(clips=1, real_clips=1, long_seconds=6, iterations=2),
                         root / "promotion", uri)
    tracking.log_files(winner.run_id, [(page, "promotion")], uri)
    exp = tracking.get_client(uri).get_experiment_by_name(EXPERIMENT)
    return {"root": root, "uri": uri, "runs": runs, "champion": champion, "experiment_id": exp.experiment_id,
            "fingerprint": MelDataset(small_dataset).fingerprint(), "dataset_name": Path(small_dataset).name}


@pytest.fixture(scope="module")
def ui(store):
    server = MlflowServer(store["root"], backend=store["uri"])
    server.start()
    yield server
    server.stop()


def test_training_runs_log_their_dataset_and_their_generator_as_a_model(store, monkeypatch):
    import mlflow
    import numpy as np
    import pandas as pd
    import torch

    from pipeline.checkpoint import load_generator
    from pipeline.config import MelConfig
    from pipeline.generate import latents_for_seed
    from pipeline.mel import to_stored_resolution
    from tracking.models import CHECKPOINT_TAG

    client = tracking.get_client(store["uri"])
    for result in store["runs"].values():
        run = client.get_run(result.run_id)
        [inp] = run.inputs.dataset_inputs
        assert (inp.dataset.name, inp.dataset.digest) == (store["dataset_name"], store["fingerprint"])
        profile = json.loads(inp.dataset.profile)
        assert profile["clips"] == 36 and profile["tracks"] == 6 and profile["mel_config"]["n_mels"] == 128
        assert json.loads(inp.dataset.source)["uri"] == run.data.params["dataset.path"]
        [out] = run.outputs.model_outputs
        logged = client.get_logged_model(out.model_id)
        assert logged.source_run_id == result.run_id and logged.tags[CHECKPOINT_TAG] == "latest"
        assert str(logged.status).endswith("READY")
    # the UI's dataset filter is a search on the dataset's name and digest
    found = client.search_runs([store["experiment_id"]], filter_string=(
        f"dataset.name = '{store['dataset_name']}' AND dataset.digest = '{store['fingerprint']}'"))
    assert {r.info.run_id for r in found} == {r.run_id for r in store["runs"].values()}

    # the champion as users without TorchServe load it: the trained generator's very mels
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    mels = mlflow.pyfunc.load_model("models:/technogan-generator@champion").predict(
        pd.DataFrame({"seed": [11]}), params={"n": 3})
    generator, meta = load_generator(store["runs"]["dcgan1"].generator_path)
    with torch.no_grad():
        ref = to_stored_resolution(generator(latents_for_seed(11, 3, meta["latent_dim"]))[:, 0],
                                   MelConfig.from_dict(meta["mel_config"])).numpy()
    assert mels.shape == ref.shape == (3, 128, 216)
    np.testing.assert_allclose(mels, ref, rtol=1e-4, atol=1e-6)


def test_the_runs_page_lists_the_runs_with_their_dataset_and_model_in_the_training_view(store, ui, page):
    page.set_viewport_size({"width": 1920, "height": 1000})  # every column of the runs table in view
    url = tracking.ui_url(ui.uri, store["experiment_id"])
    page.goto(url)
    runs, champion = store["runs"], store["champion"]

    def cell(run_id: str, column: str):
        return page.locator(f'[row-id="{run_id}"] [col-id="attributes.`{column}`"]').first

    for model, result in runs.items():
        name = page.locator(f'[row-id="{result.run_id}"] [col-id="attributes.`Run Name`"]').first
        name.wait_for()
        assert name.inner_text().split()[-1] == model  # after the pin button's colour label
        dataset = cell(result.run_id, "Dataset").inner_text()
        assert f"{store['dataset_name']} ({store['fingerprint']})" in dataset, dataset
    # the champion's row names its registered version, the other links its logged model
    models = cell(runs["dcgan1"].run_id, "Models")
    assert "technogan-generator" in models.inner_text() and f"v{champion.version}" in models.inner_text()
    other = runs["wgan-gp"].run_id
    [out] = tracking.get_client(store["uri"]).get_run(other).outputs.model_outputs
    link = cell(other, "Models").locator("a").first
    assert link.inner_text().strip() == "generator"
    assert link.get_attribute("href").endswith(f"/models/{out.model_id}")

    # the model-training view: its runs tab and model registry, not the GenAI overview
    assert "/runs" in page.url and "workflowType=machine_learning" in page.url
    nav = page.locator("nav").first.inner_text()
    assert "Model registry" in nav and "Overview" not in nav
    assert tracking.get_client(store["uri"]).get_experiment(store["experiment_id"]).tags[
        tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"

    # the dataset filter offers the training set
    page.get_by_text("Datasets", exact=True).first.click()
    option = page.get_by_role("option").filter(has_text=f"{store['dataset_name']} ({store['fingerprint']})")
    option.first.wait_for()
    assert "Training" in option.first.inner_text()  # the input's context
    page.keyboard.press("Escape")
    page.screenshot(path=str(artifact_dir() / "mlflow-ui-runs.png"))


def test_the_champions_listen_page_is_among_its_artifacts_and_plays_in_the_ui(store, ui, page):
    run_id = store["runs"]["dcgan1"].run_id
    page.set_viewport_size({"width": 1920, "height": 1000})
    page.goto(f"{ui.uri}/#/experiments/{store['experiment_id']}/runs/{run_id}/artifacts/promotion/listen.html"
              "?workflowType=machine_learning")
    page.get_by_text("listen.html", exact=True).first.wait_for()
    # the UI shows the HTML artifact inline, in a sandboxed frame: the page with its audio
    frame = page.frame_locator("iframe").first
    frame.locator("audio").first.wait_for(state="attached")
    assert frame.locator("audio").count() >= 3  # a generated clip, the long piece, a real clip
    assert "Champion: dcgan1" in frame.locator("body").inner_text()
    page.screenshot(path=str(artifact_dir() / "mlflow-ui-listen.png"))
