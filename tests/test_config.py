"""The job settings: one default each, the same in the estimator, the CLI flags and the presets."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from napari_mtmsd.config import (
    PRESETS,
    ClassifierConfig,
    PretrainConfig,
    add_arguments,
    from_arguments,
)


def test_classifier_defaults_are_the_estimators():
    from napari_mtmsd.classifier import MTMSDClassifier

    params = inspect.signature(MTMSDClassifier).parameters
    for name in ("n_models", "epochs"):
        assert getattr(ClassifierConfig(), name) == params[name].default
    assert ClassifierConfig().classifier_kwargs() == {"method": "auto", "n_models": 5, "epochs": 100}
    assert ClassifierConfig(k=12).classifier_kwargs()["k"] == 12


def test_one_table_of_presets():
    from napari_mtmsd.pretrain import _resolve_settings
    from napari_mtmsd.unet import PRESETS as ARCHITECTURES
    from napari_mtmsd.unet import UNetConfig

    assert set(ARCHITECTURES) == set(PRESETS)
    for name, preset in PRESETS.items():
        assert ARCHITECTURES[name] == UNetConfig(**preset["unet"])
        assert _resolve_settings(name) == preset["training"]
    assert PretrainConfig().preset in PRESETS


def test_feature_help_states_the_spec_defaults():
    from napari_mtmsd._text import format_ints
    from napari_mtmsd.config import FEATURE_FIELDS
    from napari_mtmsd.features import FeatureSpec

    spec = FeatureSpec()
    assert f"'{format_ints(spec.timesteps)}' (default" in FEATURE_FIELDS["timesteps"]
    assert f"'{format_ints(spec.stages)}' (default" in FEATURE_FIELDS["stages"]
    assert f"(default {spec.noise_draws};" in FEATURE_FIELDS["noise_draws"]


def test_flags_from_a_config_keep_its_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser, PretrainConfig)
    assert from_arguments(PretrainConfig, parser.parse_args([])) == PretrainConfig()
    got = from_arguments(PretrainConfig, parser.parse_args(["--preset", "tiny", "--steps", "7"]))
    assert got == dataclasses.replace(PretrainConfig(), preset="tiny", steps=7)
    with pytest.raises(SystemExit):
        parser.parse_args(["--preset", "huge"])
    text = parser.format_help()
    assert "(default 0)" in text and "cpu 800" in text  # the seed's and the preset's steps
