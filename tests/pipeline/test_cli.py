import pytest

from pipeline.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name, _, _ in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", [c[0] for c in COMMANDS])
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: technogan {name}")
    assert "--" in out  # documents its options


def test_user_errors_exit_2_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mel:\n  n_mels: lots\n")
    assert main(["segment", "--input", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "mel.n_mels" in err and "Traceback" not in err


# every command that reads a config, with the least arguments it needs to parse
CONFIG_COMMANDS = {
    "train": [], "evaluate": ["--run-id", "r"], "promote": [], "generate": ["--checkpoint", "c.pt", "--out", "o"],
    "package": [], "serve": [], "run": [], "scrape": ["--playlists", "p.yaml", "--out", "o"],
    "models": ["--model", "dcgan1"], "segment": ["--input", "i", "--out", "o"],
}


@pytest.mark.parametrize("name", sorted(CONFIG_COMMANDS))
def test_every_command_defaults_to_the_one_embedded_config(name, tmp_path, monkeypatch):
    """Issue 12, item 13: `train` then `promote` with the README's commands must agree on the
    experiment; so every command's default is the embedded preset, whatever the folder."""
    from pipeline.cli import build_parser
    from pipeline.config import config_from_args, load_config

    monkeypatch.chdir(tmp_path)
    argv = [name, *CONFIG_COMMANDS[name]]
    args = build_parser(argv).parse_args(argv)
    assert args.config is None
    assert config_from_args(args) == load_config(None)
    assert config_from_args(args).tracking.experiment == "technogan-quickstart"


@pytest.mark.parametrize("resolution", ["0", "-64", "16", "48", "512", "1024"])
def test_models_refuses_an_unsupported_resolution(resolution, capsys):
    assert main(["models", "--model", "dcgan1", "--resolution", resolution]) == 2
    err = capsys.readouterr().err
    assert "resolution" in err and f"got {resolution}" in err and "Traceback" not in err


def test_models_prints_the_asked_resolution(capsys):
    assert main(["models", "--model", "dcgan1", "--resolution", "128"]) == 0
    assert "at 128x128" in capsys.readouterr().out


def test_abbreviated_flags_are_refused(capsys):
    """`--merg` must not quietly mean `--merge` (a typo in a script or the chart would pass)."""
    with pytest.raises(SystemExit) as e:
        main(["segment", "--merg", "--out", "o"])
    assert e.value.code == 2
    assert "unrecognized arguments: --merg" in capsys.readouterr().err
