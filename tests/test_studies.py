"""The five studies as benchmark definitions: each parses at both scales, with its rows."""

from pathlib import Path

import pytest

from kerassl.benchmarking import definition as definitions

STUDIES = Path(__file__).parent.parent / "benchmarks" / "studies"
NAMES = ("a_mnist_100", "b_dogs", "c_cifar_design", "d_pathmnist_ablations", "e_moco_mnist")


def study(name: str, full: bool = False, **overrides) -> definitions.Definition:
    path = str(STUDIES / f"{name}.yaml")
    return definitions.resolve(
        definitions.read_file(path), full=full, overrides=overrides, source=path
    )


def rows(definition) -> dict:
    return {row.name: {**definition.pretrain, **row.settings} for row in definition.methods}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("full", [False, True])
def test_every_study_parses_and_runs_on_any_dataset(name, full):
    definition = study(name, full)
    assert definition.title.startswith(f"Study {name[0].upper()}")
    assert study(name, full, dataset="digits").dataset == "digits"
    for row in definition.pretrained_rows:
        definition.train_config(row, "runs").validate()


def test_a_rows_and_columns():
    small, full = study("a_mnist_100"), study("a_mnist_100", True)
    assert [rows(small)[f"simclr-b{b}"]["batch_size"] for b in (64, 256, 1024)] == [64, 256, 1024]
    assert small.protocols == ("linear", "mlp") and small.protocol_options.mlp_hidden == 512
    assert [str(b) for b in small.labels] == ["10/class"]
    assert [b.title for b in small.baselines] == [
        "supervised cnn",
        "supervised cnn (tuned)",
        "supervised resnet50 (ImageNet)",
    ]
    assert full.dataset == "mnist" and full.seeds == (0, 1, 2, 3, 4)
    assert full.pretrain["epochs"] == 100 and full.pretrain["steps_per_epoch"] is None


def test_b_needs_weights_it_may_not_have():
    definition = study("b_dogs", True)
    assert definition.dataset == "stanford_dogs" and definition.labels == (1716,)
    (simclrv2,) = [row for row in definition.methods if row.source]
    assert simclrv2.name == "simclrv2-imagenet"
    inception = definition.baselines[0]
    assert (inception.model, inception.tuned, inception.weights) == (
        "inceptionv3",
        True,
        "imagenet",
    )


def test_c_similarity_optimizer_and_augmentation_pairs():
    definition = study("c_cifar_design")
    settings = rows(definition)
    assert settings["simclr-dot"]["similarity"] == "dot"
    assert settings["simclr-lars"]["optimizer"] == "lars"
    assert [settings[f"simclr-b{b}"]["batch_size"] for b in (8, 16, 32)] == [8, 16, 32]
    pairs = definition.augment_pairs
    assert pairs.ops == ("crop", "color", "blur", "rotate") and pairs.protocol == "1nn"
    assert settings["simclr-crop+blur"]["augment"] == "crop+blur"
    assert settings["simclr-color"]["augment"] == "color"
    assert len([n for n in settings if n.startswith("simclr-") and "+" in n]) == 6
    assert definition.protocols == ("1nn", "linear")


def test_d_ablations_and_label_fractions():
    small, full = study("d_pathmnist_ablations"), study("d_pathmnist_ablations", True)
    settings = rows(full)
    assert full.labels == (0.1, 0.2, 0.4, 1.0)
    assert settings["simclr-crop+color+blur"]["augment"] == "crop+color+blur"
    assert settings["barlow_twins-l1e-4"]["bt_lambda"] == 1e-4
    widths = [settings[n]["projector_dims"] for n in ("barlow_twins", "barlow_twins-wide")]
    assert widths == ["4096,4096,4096", "8192,8192,8192"]
    assert settings["simclr-b1024"]["batch_size"] == 1024 and "simclr-b1024" not in rows(small)
    assert {row.name for row in small.methods if row.source} == {"dinov2", "clip"}
    assert settings["simclr-imagenet-init"]["weights"] == "imagenet"


def test_e_moco_topk_and_baselines():
    definition = study("e_moco_mnist")
    moco = rows(definition)["moco"]
    assert (moco["method"], moco["momentum"], moco["temperature"]) == ("moco", 0.999, 0.07)
    assert definition.metrics == ("top1", "top2", "top5") and definition.validation == 0.25
    assert [b.name for b in definition.baselines] == ["mlp", "mlp-tuned", "cnn", "cnn-tuned"]
    assert study("e_moco_mnist", True).methods[0].settings["queue_size"] == 4096


def test_methods_flag_picks_rows_of_a_study():
    definition = study("d_pathmnist_ablations", methods="simclr-t0.7,moco,supervised")
    assert [(row.name, row.settings.get("temperature")) for row in definition.methods] == [
        ("simclr-t0.7", 0.7),
        ("moco", None),
    ]
    assert [b.name for b in definition.baselines] == ["cnn", "cnn-tuned"]
