import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipeline.config import ConfigError, MelConfig, RunConfig, load_config


def test_mel_config_defaults_match_the_study_setup():
    c = MelConfig()
    assert (c.sample_rate, c.clip_seconds, c.n_fft, c.hop_length, c.n_mels) == (22050, 5.0, 2048, 512, 128)
    assert c.f_max == 11025 and c.fmin == 0 and c.top_db == 80
    assert c.clip_samples == 110250
    assert c.shape == (128, 216)


def test_mel_config_json_round_trip(tmp_path):
    c = MelConfig(n_mels=96, fmax=8000.0, top_db=70.0)
    c.save(tmp_path / "mel_config.json")
    assert MelConfig.load(tmp_path / "mel_config.json") == c
    assert json.loads((tmp_path / "mel_config.json").read_text())["n_mels"] == 96


def test_run_config_yaml_round_trip(tmp_path):
    cfg = load_config("configs/quickstart.yaml")
    cfg.save(tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_quickstart_preset_loads_and_overrides_apply():
    cfg = load_config("configs/quickstart.yaml", {"data.max_samples": 10, "segment.workers": None})
    assert isinstance(cfg, RunConfig)
    assert cfg.data.max_samples == 10
    assert cfg.mel == MelConfig()


@pytest.mark.parametrize(
    "yaml_text, key",
    [
        ("mel:\n  n_melz: 64\n", "mel.n_melz"),
        ("mel:\n  n_mels: -3\n", "mel.n_mels"),
        ("data:\n  resolution: 48\n", "data.resolution"),
        ("segment:\n  workers: many\n", "segment.workers"),
        ("bogus_section: {}\n", "bogus_section"),
        ("mel:\n  fmax: 20000\n", "mel"),
        ("synth:\n  format: aiff\n", "synth.format"),
    ],
)
def test_validation_errors_name_the_key(tmp_path, yaml_text, key):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}: {key}:" in str(e.value)


def test_unknown_key_is_called_unknown(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("segment:\n  wrokers: 2\n")
    with pytest.raises(ConfigError, match=r"segment\.wrokers: unknown key"):
        load_config(p)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("mel: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(p)


# ----------------------------------------------------------------------------- strict values (issue 12, item 9)

def _sections():
    """(section name, Section class) of every section of the run config."""
    from pipeline.config import Section

    for name, field in RunConfig.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            yield name, field.annotation


def _fields_of(kind):
    from pipeline.config import _scalar_kinds

    for section, cls in _sections():
        for name, field in cls.model_fields.items():
            if kind in _scalar_kinds(field.annotation):
                yield section, name, field


def _rejects(tmp_path, section: str, key: str, value) -> str:
    p = tmp_path / "bad.yaml"
    import yaml

    p.write_text(yaml.safe_dump({section: {key: value}}))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}: {section}.{key}:" in str(e.value), str(e.value)
    return str(e.value)


def test_every_integer_setting_refuses_booleans_fractions_and_strings(tmp_path):
    fields = [(s, n) for s, n, f in _fields_of(int) if float not in _kinds(f) and bool not in _kinds(f)]
    assert ("train", "epochs") in fields and ("serve", "port") in fields and len(fields) > 30
    for section, name in fields:
        for bad in (True, False, 2.5, "5"):
            _rejects(tmp_path, section, name, bad)


def test_every_number_setting_refuses_infinity_nan_and_booleans(tmp_path):
    fields = [(s, n) for s, n, _ in _fields_of(float)]
    assert ("train", "lr") in fields and ("mel", "top_db") in fields and len(fields) > 20
    for section, name in fields:
        for bad in (float("inf"), float("-inf"), float("nan"), True):
            _rejects(tmp_path, section, name, bad)
    # inside tuples too (the key names the element)
    for section, key, value in [("train", "betas", [0.5, float("inf")]), ("evaluate", "beat_bpm", [float("nan"), 150])]:
        p = tmp_path / "tuple.yaml"
        p.write_text(yaml.safe_dump({section: {key: value}}))
        with pytest.raises(ConfigError, match=rf"{section}\.{key}\.[01]: .*finite"):
            load_config(p)


def test_every_switch_refuses_anything_but_true_or_false(tmp_path):
    fields = [(s, n) for s, n, _ in _fields_of(bool)]
    assert ("train", "amp") in fields
    for section, name in fields:
        for bad in (1, 0, "yes", "no", "true"):
            _rejects(tmp_path, section, name, bad)


def test_names_must_not_be_empty(tmp_path):
    fields = [(s, n) for s, n, f in _fields_of(str) if f.default != ""]
    assert ("tracking", "experiment") in fields and ("evaluate", "registry_model") in fields
    for section, name in fields:
        for bad in ("", "   "):
            _rejects(tmp_path, section, name, bad)
    p = tmp_path / "top.yaml"
    p.write_text('name: ""\n')
    with pytest.raises(ConfigError, match=r"top.yaml: name:"):
        load_config(p)


def test_the_reported_examples_name_their_key(tmp_path):
    for text, key in [("train:\n  epochs: true\n", "train.epochs"), ("train:\n  lr: .inf\n", "train.lr"),
                      ('tracking:\n  experiment: ""\n', "tracking.experiment")]:
        p = tmp_path / "bad.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=rf"{p}: {key}:"):
            load_config(p)


def test_ordinary_values_still_load(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("train: {lr: 1.0e-4, betas: [0.5, 0.9], epochs: 3, amp: false}\nmel: {top_db: 80}\n"
                 "synth: {channels: 1}\nevaluate: {beat_bpm: [120, 150]}\n")
    c = load_config(p)
    assert c.train.lr == 1e-4 and c.train.epochs == 3 and c.train.amp is False and c.mel.top_db == 80.0
    assert c.synth.channels == 1 and c.train.betas == (0.5, 0.9)


def _kinds(field):
    from pipeline.config import _scalar_kinds

    return _scalar_kinds(field.annotation)


def test_config_resolutions_are_exactly_the_ones_the_networks_build():
    """Both sides share one bound, so compare each with the set written out here: the
    config accepts exactly these, and the networks really build them (and refuse the rest)."""
    import torch

    from pipeline.config import DataConfig, ModelConfig
    from pipeline.errors import UserError
    from pipeline.models.registry import get_model

    supported = {32, 64, 128, 256}
    tiny = ModelConfig(g_width=4, d_width=4, latent_dim=8)
    for r in [0, 1, 8, 16, 24, 32, 48, 64, 128, 256, 384, 512, 1024, 2048]:
        if r in supported:
            assert DataConfig(resolution=r).resolution == r
            for name in ("dcgan1", "wgan-gp"):
                spec = get_model(name)
                g, d = spec.build_generator(tiny, r).eval(), spec.build_critic(tiny, r).eval()
                with torch.no_grad():
                    fake = g(torch.zeros(1, 8))
                    assert tuple(fake.shape) == (1, 1, r, r), (name, r)
                    assert d(fake).shape[0] == 1, (name, r)
        else:
            with pytest.raises(ValidationError):
                DataConfig(resolution=r)
            with pytest.raises(UserError):
                get_model("dcgan1").build_generator(tiny, r)


# ----------------------------------------------------------------------------- one default (issue 12, item 13)

def test_embedded_defaults_are_the_quickstart_preset_from_any_folder(tmp_path, monkeypatch):
    from pathlib import Path

    preset = load_config(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")
    monkeypatch.chdir(tmp_path)  # no configs/ here, as in a container with only the package installed
    assert load_config(None) == preset
    assert load_config(None).tracking.experiment == "technogan-quickstart"


def test_a_named_run_with_a_preset_trains_the_recipe_on_this_configs_data_and_tracking(tmp_path):
    from pipeline.config import named_run

    base = load_config(None, {"tracking.experiment": "mine", "train.dataset": "/data/x"})
    recipe = load_config(Path(__file__).resolve().parents[2] / "configs" / "laptop.yaml")
    run = named_run(base, "laptop")
    # the recipe's model, data and train sections...
    assert (run.train.loss, run.model.spectral_norm, run.data.normalize, run.train.ema_decay) == \
        (recipe.train.loss, recipe.model.spectral_norm, recipe.data.normalize, recipe.train.ema_decay)
    # ...on this config's data, tracking and mel, with the entry's budget and overrides applied last
    assert (run.train.dataset, run.tracking.experiment, run.mel) == ("/data/x", "mine", base.mel)
    assert (run.train.max_minutes, run.train.max_steps, run.train.score_every) == (5.0, 500, 125)
    assert (run.model.g_width, run.model.d_width, recipe.model.g_width) == (16, 16, 24)  # the entry's, not the recipe's
    # the quickstart's own Dropout, learning rate and layout are not the recipe's: the recipe's win
    assert (run.model.g_dropout, run.train.lr_g, run.train.channels_last) == \
        (recipe.model.g_dropout, recipe.train.lr_g, recipe.train.channels_last) == (0.0, 6e-4, True)
    assert (base.model.g_dropout, base.train.lr_g, base.train.channels_last) == (0.2, None, False)
    assert (run.train.amp, base.train.amp) == (recipe.train.amp, True) == ("auto", True)  # the study runs: float32 on CPU
    assert base.model.name == "dcgan1" and run.model.name == "dcgan2"
    assert (run.model.d_time_branch, run.train.ema_decay, base.model.d_time_branch) == (True, 0.995, False)
    assert (run.model.d_rhythm_branch, base.model.d_rhythm_branch) == (True, False)
    with pytest.raises(ConfigError, match="known: laptop"):
        named_run(base, "nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  runs:\n    r: {preset: laptop, overrides: {model.g_widht: 16}}\n"
                   "    q: {preset: no-such-preset}\n")
    with pytest.raises(ConfigError, match=r"train.runs.r.*model.g_widht: unknown key"):
        named_run(load_config(bad), "r")
    with pytest.raises(ConfigError, match="no-such-preset.*packaged: laptop, quickstart"):
        named_run(load_config(bad), "q")
