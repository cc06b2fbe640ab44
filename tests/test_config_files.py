"""`--config FILE` for `kerassl tune`, `export` and `serve` (`kerassl.settings_file`): the
file's settings, the command line over them, and one-line errors for a bad file."""

from __future__ import annotations

import json

import pytest

from kerassl import export, serve, tune
from kerassl.errors import UserError
from kerassl.settings_file import given_options, parse_with_settings, read_settings


def one_line_error(main, argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kerassl: error: ") and err.count("\n") == 1, err
    return err


# ------------------------------------------------------------------------- the reader


def test_read_settings_takes_a_run_config_json_settings_and_reads_exponents(tmp_path):
    run_config = tmp_path / "config.json"
    run_config.write_text(json.dumps({"class_names": ["a"], "settings": {"lr": 0.1, "n": 2}}))
    assert read_settings(str(run_config), ["lr", "n"]) == {"lr": 0.1, "n": 2}
    path = tmp_path / "s.yaml"
    path.write_text("lr: 3e-4\nname: 1e-6\nn: 2\n")  # YAML 1.1: 3e-4 is a string
    values = read_settings(str(path), ["lr", "name", "n"], defaults={"lr": 1.0, "name": "x"})
    assert values == {"lr": 3e-4, "name": "1e-6", "n": 2}  # only float settings coerced


@pytest.mark.parametrize(
    "text, message",
    [
        ("lrr: 1\n", "unknown setting 'lrr' in {path}; did you mean lr?"),
        ("- 1\n", "--config {path} must hold a mapping of settings"),
        ("settings: [1]\n", "--config {path} must hold a mapping of settings"),
        ("lr: [\n", "cannot read --config {path}: while parsing a flow node"),
        (None, "cannot read --config {path}: No such file or directory"),
    ],
)
def test_read_settings_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as info:
        read_settings(str(path), ["lr"])
    assert str(info.value) == message.format(path=path)


def test_given_options_leaves_the_parser_as_it_was():
    parser = serve.build_parser()
    assert given_options(parser, ["export", "--port", "0"]) == {"export_dir", "port"}
    assert parser.parse_args(["x"]).port == 8501


# ------------------------------------------------------------------------------- tune


SEARCH = "model: cnn\ndataset: digits\nlabels: 50\nvalidation: 3e-1\nmax_trials: 5\n"


def test_tune_config_is_a_search_definition_under_the_command_line(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text(SEARCH + "space:\n  batch_size: 16\n")

    def resolve(*argv):
        return tune.resolve_config(tune.build_parser().parse_args(list(argv)))

    from_file = resolve("--config", str(path))
    assert from_file == resolve(str(path))  # the same as the file given as TARGET
    assert (from_file.model, from_file.validation, from_file.space) == (
        "cnn",
        0.3,
        {"batch_size": 16},
    )
    over = resolve("mlp", "--config", str(path), "--max-trials", "2", "--labels", "40")
    assert (over.model, over.max_trials, over.labels, over.dataset) == ("mlp", 2, "40", "digits")


def test_tune_config_errors_are_one_line(tmp_path, capsys):
    path = tmp_path / "search.yaml"
    path.write_text(SEARCH)
    typo = tmp_path / "typo.yaml"
    typo.write_text("max_trial: 3\n")
    out = ["--out", str(tmp_path / "never")]
    err = one_line_error(tune.main, ["--config", str(typo), *out], capsys)
    assert f"unknown setting 'max_trial' in {typo}; did you mean max_trials?" in err
    err = one_line_error(tune.main, ["--config", str(tmp_path / "no.yaml"), *out], capsys)
    assert "cannot read --config" in err and "No such file" in err
    err = one_line_error(tune.main, [str(path), "--config", str(path), *out], capsys)
    assert "as TARGET or as --config, not both" in err
    assert "give the model to tune" in one_line_error(tune.main, out, capsys)
    assert not (tmp_path / "never").exists()


# ----------------------------------------------------------------------------- export


def test_export_from_a_config_file_with_the_command_line_winning(tmp_path, monkeypatch):
    from kerassl.serving import export as exporting
    from kerassl.testing.fake_run import make_run_dir

    calls = []
    monkeypatch.setattr(exporting, "export_run", lambda *args, **kw: calls.append((args, kw)))
    run = make_run_dir(tmp_path / "run")
    path = tmp_path / "export.yaml"
    path.write_text(f"run_dir: {run}\nname: from_file\nout: out\nversion: 3\ntop_k: 2\n")
    assert export.main(["--config", str(path), "--name", "given"]) == 0
    assert calls == [
        (
            (str(run), "given", "out"),
            {"version": 3, "top_k": 2, "config_base_path": "/models", "model": "classifier"},
        )
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("nmae: m\n", "unknown setting 'nmae' in {path}; did you mean name?"),
        ("model: encoder\n", "setting 'model' in {path}: invalid choice: 'encoder'"),
        ("top_k: many\n", "setting 'top_k' in {path}: invalid int value: 'many'"),
        ("name: [a, b]\n", "setting 'name' in {path} must be a single value"),
        ("config: other.yaml\n", "unknown setting 'config' in {path}"),
    ],
)
def test_export_config_errors_are_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "export.yaml"
    path.write_text(text)
    argv = ["--config", str(path), "--out", str(tmp_path / "export")]
    assert message.format(path=path) in one_line_error(export.main, argv, capsys)
    assert not (tmp_path / "export").exists()


# ------------------------------------------------------------------------------ serve


@pytest.fixture
def export_dir(tmp_path):
    """Enough of an export for the CLI's checks (which run before anything loads)."""
    (tmp_path / "export" / "m" / "1").mkdir(parents=True)
    (tmp_path / "export" / "m" / "1" / "saved_model.pb").write_bytes(b"")
    return tmp_path / "export"


def test_serve_options_from_a_config_file_under_the_command_line(export_dir, tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(
        f"export_dir: {export_dir}\nport: 9\npoll_seconds: 5e-1\nverbose: true\nhost: ''\n"
    )
    args = parse_with_settings(serve.build_parser(), ["--config", str(path), "--port", "0"])
    serve.check_args(args)
    assert (args.export_dir, args.port, args.poll_seconds) == (str(export_dir), 0, 0.5)
    assert args.verbose is True and args.host == "" and args.max_body_mb == 10.0
    other = parse_with_settings(serve.build_parser(), [str(tmp_path), "--config", str(path)])
    assert other.export_dir == str(tmp_path)  # the positional given wins too


def test_serve_config_errors_are_one_line(export_dir, tmp_path, capsys):
    path = tmp_path / "serve.yaml"
    path.write_text("prot: 0\n")
    err = one_line_error(serve.main, [str(export_dir), "--config", str(path)], capsys)
    assert f"unknown setting 'prot' in {path}; did you mean port?" in err
    path.write_text("verbose: 1\n")
    err = one_line_error(serve.main, [str(export_dir), "--config", str(path)], capsys)
    assert f"setting 'verbose' in {path} must be true or false; got 1" in err
    path.write_text(f"export_dir: {tmp_path / 'missing'}\nport: 0\n")
    assert "does not exist" in one_line_error(serve.main, ["--config", str(path)], capsys)
    path.write_text("port: 0\n")
    assert "EXPORT_DIR is required" in one_line_error(serve.main, ["--config", str(path)], capsys)
    err = one_line_error(serve.main, ["--config", str(tmp_path / "none.yaml")], capsys)
    assert "cannot read --config" in err


def test_the_5_minute_recipe_is_a_train_config_and_the_defaults():
    """benchmarks/recipes/simclr_5min.yaml runs as `kerassl train --config`, and its
    settings are kerassl train's defaults (which it chose): the two cannot drift apart."""
    from pathlib import Path

    from kerassl import train
    from kerassl.config import TrainConfig

    recipe = Path(__file__).resolve().parents[1] / "benchmarks" / "recipes" / "simclr_5min.yaml"
    parser = train.build_parser()
    argv = ["--config", str(recipe)]
    config = train.settings_of(parser.parse_args(argv), train.given_settings(parser, argv))
    config.validate()
    assert config.time_budget == "80s"
    defaults = TrainConfig()
    for name in ("method", "batch_size", "learning_rate", "temperature", "head"):
        assert getattr(config, name) == getattr(defaults, name), name
