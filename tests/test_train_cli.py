"""The training CLI for each method, and its answers to bad input. (SimCLR end to end,
killed and continued: tests/test_resume.py; the sweep of bad inputs: tests/test_bad_inputs.py.)"""

import json

import pytest

from kerassl.train import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["swav", "--dataset", "digits"], "unknown method 'swav'"),
        (["simclr", "--dataset", "no_such_dataset_xyz"], "no_such_dataset_xyz"),
        (
            ["simclr", "--dataset", "digits", "--labels", "1500"],
            "class 0 has 142 labeled examples, 150 asked",
        ),
        (["simclr", "--dataset", "digits", "--batch-size", "100000"], "--batch-size 100000"),
        (["simclr", "--dataset", "digits", "--epochs", "0"], "--epochs"),
        (["simclr", "--dataset", "digits", "--encoder", "vgg"], "unknown encoder"),
        (["simclr", "--dataset", "digits", "--warmup-epochs", "3", "--epochs", "2"], "warmup"),
        (["--similarity", "l2"], "--similarity must be one of cosine, dot; got l2"),
        (["moco", "--similarity", "dot"], "--similarity applies to simclr only; got"),
        (["--augment", "crop+crp"], "unknown augmentation 'crp' in 'crop+crp'; presets: none"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    code = main([*argv, "--out", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("kerassl: error:") and "\n" not in err and message in err, err
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_missing_local_data_offline_says_how_to_get_it(tmp_path, capsys):
    code = main(
        [
            "simclr",
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path),
            "--offline",
            "--out",
            str(tmp_path / "runs"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "--data-dir" in err  # tells the user where to put the files


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["simclr", "--dataset", "digits", "--out", str(blocker / "runs"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot create run directory" in err and "\n" not in err


def test_argparse_errors_are_one_line(capsys):
    assert main(["simclr", "--epochs", "many"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kerassl: error:") and "\n" not in err


@pytest.mark.parametrize(
    "method, options",
    [
        ("moco", ["--queue-size", "100", "--momentum", "0.9", "--bn-groups", "2", "--symmetric"]),
        ("barlow_twins", ["--projector-dims", "64,64,32", "--bt-lambda", "0.01", "--online-probe"]),
    ],
)
def test_moco_and_barlow_twins_run_like_simclr(tmp_path, capsys, method, options):
    argv = [method, "--dataset", "digits", "--labels", "50", "--max-unlabeled", "256",
            "--batch-size", "32", "--epochs", "1", "--baseline", "none", "--xla", "on",
            "--out", str(tmp_path), "--run-name", "run", "--quiet", *options]  # fmt: skip
    assert main(argv) == 0
    assert f"{method} + linear probe: top-1" in capsys.readouterr().out
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == method and config["jit_compile"] is True
    if method == "moco":
        assert (config["queue_size"], config["momentum"], config["bn_groups"]) == (100, 0.9, 2)
        assert config["symmetric"] is True
    else:
        assert (config["projector_dims"], config["bt_lambda"]) == ("64,64,32", 0.01)
        assert config["online_probe"] is True
        assert "probe_accuracy" in (run / "history.csv").read_text().splitlines()[0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["linear_probe"]["top1"] <= 1.0
    assert metrics["dataset"]["num_unlabeled"] == 256


def test_xla_setting():
    from kerassl.config import TrainConfig
    from kerassl.errors import UserError
    from kerassl.plan import step_jit_compile
    from kerassl.train import build_parser

    assert build_parser().parse_args(["simclr"]).jit_compile == "auto"
    assert build_parser().parse_args(["simclr", "--no-xla"]).jit_compile == "off"
    assert step_jit_compile(True) and not step_jit_compile(False)
    assert not step_jit_compile("auto")  # no GPU here: the plain graph step is faster on CPU
    with pytest.raises(UserError, match="--xla must be auto, on or off"):
        TrainConfig(jit_compile="sometimes").validate()
