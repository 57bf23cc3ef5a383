import json

import pytest

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
