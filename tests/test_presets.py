"""Augmentation presets: one data structure, its rules, the flip decision, a light import."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import subprocess
import sys

import pytest

from kerassl.config import TrainConfig
from kerassl.data.presets import (
    OPS,
    OPTION_NAMES,
    PRESETS,
    AugmentOptions,
    get_preset,
    label_flip,
)
from kerassl.errors import UserError


def test_presets_and_their_names():
    assert list(PRESETS) == ["none", "digits", "fashion", "natural", "histology"]
    assert PRESETS["none"] == AugmentOptions()
    assert all(isinstance(options, AugmentOptions) for options in PRESETS.values())


@pytest.mark.parametrize(
    "preset, flips",
    [("fashion", True), ("natural", True), ("histology", True), ("digits", False), ("none", False)],
)
def test_label_flip_follows_the_presets_flip(preset, flips):
    assert label_flip(preset) is flips


def test_unknown_preset_is_a_one_line_user_error():
    for lookup in (get_preset, label_flip):
        with pytest.raises(UserError, match="sepia") as info:
            lookup("sepia")
        assert "\n" not in str(info.value) and all(name in str(info.value) for name in PRESETS)


def test_each_op_sets_its_own_options_and_no_other_ops():
    assert list(OPS) == ["crop", "flip", "rotate", "rot90", "color", "gray", "blur"]
    identity = dataclasses.asdict(AugmentOptions())
    for name, fields in OPS.items():
        options = dataclasses.asdict(get_preset(name))  # one op alone is a composition too
        changed = {field for field in OPTION_NAMES if options[field] != identity[field]}
        assert changed == set(fields), name
    for a, b in itertools.combinations(OPS, 2):
        assert not set(OPS[a]) & set(OPS[b]), (a, b)


@pytest.mark.parametrize("a, b", list(itertools.combinations(OPS, 2)))
def test_a_pair_of_ops_is_the_union_of_their_options_in_either_order(a, b):
    union = AugmentOptions(**OPS[a], **OPS[b])
    assert get_preset(f"{a}+{b}") == union == get_preset(f"{b}+{a}")
    assert label_flip(f"{a}+{b}") is ("flip" in (a, b))


def test_all_ops_in_any_order_and_everywhere_a_preset_name_goes():
    every = "+".join(OPS)
    assert get_preset(every) == get_preset("+".join(reversed(OPS)))
    assert get_preset(every) == AugmentOptions(
        **{k: v for op in OPS.values() for k, v in op.items()}
    )
    TrainConfig(augment="crop+color+flip").validate()
    with pytest.raises(UserError, match="unknown augmentation 'crp' in 'crp\\+blur'"):
        TrainConfig(augment="crp+blur").validate()


@pytest.mark.parametrize("name", ["crp+blur", "crop+", "crop+none", "crop+natural"])
def test_unknown_op_is_a_one_line_error_naming_presets_and_ops(name):
    with pytest.raises(UserError) as info:
        get_preset(name)
    message = str(info.value)
    bad = name.split("+")[1] if name.startswith("crop") else "crp"
    assert message.startswith(f"unknown augmentation {bad!r} in {name!r}; presets: none, ")
    assert "\n" not in message and all(op in message for op in OPS)


def test_an_op_twice_or_two_ops_setting_one_option_are_errors(monkeypatch):
    with pytest.raises(UserError, match="'crop\\+blur\\+crop' names 'crop' twice"):
        get_preset("crop+blur+crop")
    monkeypatch.setitem(OPS, "zoom", {"crop_scale": (0.5, 1.0)})
    with pytest.raises(UserError, match="'crop' and 'zoom' both set crop_scale"):
        get_preset("crop+zoom")


def test_options_are_checked_normalised_and_frozen():
    options = AugmentOptions(crop_scale=[0.5, 1], rotation=3, rot90=1)
    assert options.crop_scale == (0.5, 1.0) and isinstance(options.crop_scale, tuple)
    assert isinstance(options.rotation, float) and options.rot90 is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.rotation = 4.0
    with pytest.raises(ValueError, match="Received: hue=0.6"):
        AugmentOptions(hue=0.6)
    with pytest.raises(ValueError, match="Received: crop_scale="):
        options.replace(crop_scale=(0.0, 1.0))


def test_unset_jitter_follows_colour_strength():
    natural = PRESETS["natural"].with_jitter()
    assert (natural.brightness, natural.contrast, natural.saturation, natural.hue) == (
        pytest.approx((0.4, 0.4, 0.4, 0.1))
    )
    fashion = PRESETS["fashion"].with_jitter()  # sets brightness and contrast, no strength
    assert (fashion.brightness, fashion.contrast, fashion.saturation, fashion.hue) == (
        0.8,
        0.8,
        0.0,
        0.0,
    )


def test_augmenter_arguments_and_config_are_the_options():
    from kerassl.data.augment import Augmenter

    parameters = list(inspect.signature(Augmenter.__init__).parameters)
    assert parameters == ["self", "preset", *OPTION_NAMES, "seed", "kwargs"]
    config = Augmenter("histology", rotation=5, seed=1).get_config()
    expected = dataclasses.asdict(PRESETS["histology"].replace(rotation=5).with_jitter())
    assert {name: config[name] for name in OPTION_NAMES} == expected
    assert config["preset"] == "histology" and config["seed"] == 1


def test_presets_and_registry_import_no_tensorflow():
    code = (
        "import sys, kerassl.data.presets, kerassl.data.registry; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
