"""`--precision`: the setting (validated, recorded, compared on a re-run, in the XLA cache
key), a method built by `build_method` under the policy (float32 features and encoder file,
no policy left behind, loss scaling and its checkpoint round trip), and a tiny run end to
end. Each method's own mixed-precision training is checked by its test file through
`kerassl.testing.method_contract.check_precision`."""

import json
import types
from pathlib import Path

import numpy as np
import pytest

from kerassl import resume
from kerassl.config import TrainConfig
from kerassl.errors import UserError
from kerassl.train import main


def test_the_setting_is_validated_and_recorded():
    assert TrainConfig().precision == "float32"
    for precision in ("float32", "mixed_bfloat16", "mixed_float16"):
        TrainConfig(precision=precision).validate()
        assert TrainConfig(precision=precision).to_json()["precision"] == precision
    with pytest.raises(UserError, match="unknown precision 'float16'; choose one of float32, "):
        TrainConfig(precision="float16").validate()


def test_a_bad_precision_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    code = main(["simclr", "--dataset", "digits", "--precision", "fp8", "--out", str(runs)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith("kerassl: error: unknown precision 'fp8'"), err
    assert not runs.exists()


def _header(path: Path, settings: dict) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"settings": settings}))


def test_another_precision_is_another_setting_on_a_rerun(tmp_path):
    config = TrainConfig(dataset="digits", out=str(tmp_path), run_name="r")
    _header(tmp_path / "r", config.to_json())
    bf16 = TrainConfig(
        dataset="digits", out=str(tmp_path), run_name="r", precision="mixed_bfloat16"
    )
    with pytest.raises(UserError, match=r"--precision mixed_bfloat16 \(the run has float32\)"):
        resume.decide(bf16)
    with pytest.raises(UserError, match="--precision cannot change on resume"):
        resume.decide(bf16, resume=str(tmp_path / "r"), given={"precision"})
    # A run recorded before --precision existed was float32: the default continues it.
    old = {k: v for k, v in config.to_json().items() if k != "precision"}
    _header(tmp_path / "old", old)
    again = TrainConfig(dataset="digits", out=str(tmp_path), run_name="old")
    assert resume.decide(again)[1].action == resume.CONTINUE


def test_the_xla_cache_key_holds_the_runs_precision(monkeypatch):
    from kerassl import xla_choice

    keys = []
    monkeypatch.setattr(xla_choice, "choose", lambda *_, key, **__: keys.append(key))
    for precision in ("float32", "mixed_bfloat16"):
        plan = types.SimpleNamespace(
            config=TrainConfig(precision=precision),
            preset="digits",
            data=types.SimpleNamespace(image_shape=(8, 8, 1)),
            replicas=1,
            total_steps=1000,
        )
        xla_choice.choose_for_plan(plan)
    assert [key["precision"] for key in keys] == ["float32", "mixed_bfloat16"]


def test_build_method_builds_under_the_policy_and_leaves_none_behind():
    """BYOL under mixed_float16 as `kerassl train` builds it: float16 layers, float32
    features, a LossScaleOptimizer through which BYOL still reads its schedule's length,
    and the process's policy float32 again."""
    import keras

    from kerassl.pretraining import build_method
    from kerassl.testing.synthetic import tiny_float_images

    config = TrainConfig(method="byol", precision="mixed_float16", projection_dim=8, hidden_dim=16)
    config.validate()
    images = tiny_float_images(4)
    model = build_method(config, images.shape[1:], preset="none", total_steps=6)
    assert keras.config.dtype_policy().name == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.encoder.layers[1].compute_dtype == "float16"
    assert model.target_encoder.layers[1].compute_dtype == "float16"
    assert model.schedule_steps() == 6
    assert keras.backend.standardize_dtype(model(images).dtype) == "float32"


def test_a_float16_checkpoint_round_trips_with_its_loss_scale(tmp_path):
    """2 steps of BYOL (momentum target) under mixed_float16 with Keras' default loss
    scale, checkpoint, restore into a new model: every variable (the loss scale and its
    step counter included) equal, and the next step the same in both."""
    import keras

    from kerassl import checkpoint
    from kerassl.models.base import loss_scaled
    from kerassl.testing.method_contract import build_tiny
    from kerassl.testing.synthetic import tiny_float_images

    images = tiny_float_images(8)
    kwargs = {"base_momentum": 0.9, "total_steps": 6, "predictor_hidden_dim": 12}

    def built():
        model = build_tiny("byol", kwargs, precision="mixed_float16")
        optimizer = loss_scaled(keras.optimizers.AdamW(1e-2), "mixed_float16")
        model.compile(optimizer=optimizer, jit_compile=False, auto_scale_loss=False)
        return model

    model = built()
    for _ in range(2):
        model.train_on_batch(images)
    path = tmp_path / checkpoint.STATE
    checkpoint.save(model, path, checkpoint.TrainingState(step=2))
    restored = built()
    assert checkpoint.restore(restored, path).step == 2
    assert float(restored.optimizer.dynamic_scale) == float(model.optimizer.dynamic_scale)
    for a, b in zip(
        model.variables + model.optimizer.variables,
        restored.variables + restored.optimizer.variables,
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=a.path)
    losses = [float(m.train_on_batch(images, return_dict=True)["loss"]) for m in (model, restored)]
    assert np.isfinite(losses).all(), losses
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)


def test_a_tiny_bfloat16_run_end_to_end(tmp_path, capsys):
    """`kerassl train simclr --precision mixed_bfloat16`: config.json records it, and the
    run's encoder.keras loads (under the default policy) into a bfloat16 network whose
    features are float32."""
    import keras

    from kerassl.run_dir import open_run

    argv = ["simclr", "--dataset", "digits", "--precision", "mixed_bfloat16", "--labels", "50",
            "--max-unlabeled", "64", "--batch-size", "32", "--epochs", "1", "--knn-every", "0",
            "--baseline", "none", "--projection-dim", "16", "--hidden-dim", "32",
            "--out", str(tmp_path), "--run-name", "run", "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert "simclr + linear probe: top-1" in capsys.readouterr().out
    assert keras.config.dtype_policy().name == "float32"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["settings"]["precision"] == "mixed_bfloat16"
    run = open_run(tmp_path / "run")
    encoder = run.load("encoder")
    assert {layer.compute_dtype for layer in encoder.layers} >= {"bfloat16"}
    features = encoder(np.zeros((2, *run.image_shape), "float32"))
    assert keras.backend.standardize_dtype(features.dtype) == "float32"
