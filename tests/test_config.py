"""LLCConfig: every sampling setting, validated once, with a lossless dict form."""

from __future__ import annotations

import json

import pytest
import torch

from lambdahat import LLCConfig
from lambdahat.config import parse_dtype


def test_dict_round_trip_is_lossless_and_json_able():
    cfg = LLCConfig(
        draws=50,
        chains=3,
        learning_rate="auto",
        nbeta=12.5,
        dtype="bf16",
        sampler="rmsprop_sgld",
        sampler_options={"alpha": 0.9},
        bounding_box_size=2.0,
        model_mode="train",
        grad_accum_steps=3,
    )
    data = json.loads(json.dumps(cfg.to_dict()))
    assert LLCConfig.from_dict(data) == cfg and hash(LLCConfig.from_dict(data)) == hash(cfg)
    assert data["dtype"] == "bfloat16" and cfg.dtype is torch.bfloat16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"draws": 0}, "draws must be an int >= 1"),
        ({"burnin_steps": -1}, "burnin_steps must be an int >= 0"),
        ({"chains": 2.0}, "chains must be an int >= 1"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
        ({"learning_rate": "fast"}, "learning_rate must be a positive number or 'auto'"),
        ({"localization": float("nan")}, "localization must be a finite number >= 0"),
        ({"dtype": "int8"}, "dtype must be one of float32, float64, bfloat16, float16"),
        ({"sampler": "hmc"}, "sampler must be one of sgld, rmsprop_sgld, sgnht"),
        ({"sampler_options": {"nope": 1}}, "do not fit 'sgld'"),
        ({"model_mode": "training"}, "model_mode must be 'eval' or 'train'"),
        ({"restrict_to_orth_grad": 1}, "restrict_to_orth_grad must be True or False"),
        ({"grad_accum_steps": 0}, "grad_accum_steps must be an int >= 1"),
    ],
)
def test_bad_settings_say_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LLCConfig(**kwargs)


def test_unknown_settings_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown settings \\['drawz'\\]"):
        LLCConfig.from_dict({"drawz": 3})
    with pytest.raises(TypeError, match="unknown settings"):
        LLCConfig().replace(drawz=3)


def test_replace_validates_and_structural_fields():
    cfg = LLCConfig()
    assert cfg.replace(dtype="float64").structural() == {
        "dtype": torch.float64,
        "model_mode": "eval",
        "restrict_to_orth_grad": False,
    }
    with pytest.raises(ValueError):
        cfg.replace(chains=0)


def test_rmsprop_adapts_during_burn_in_unless_told():
    assert LLCConfig(sampler="rmsprop_sgld", burnin_steps=7).build_sampler().step.keywords["adapt_steps"] == 7
    opts = {"adapt_steps": 3}
    assert (
        LLCConfig(sampler="rmsprop_sgld", sampler_options=opts).build_sampler().step.keywords["adapt_steps"]
        == 3
    )


def test_parse_dtype_accepts_objects_names_and_short_names():
    assert parse_dtype(torch.float16) is torch.float16
    assert parse_dtype("torch.float32") is torch.float32 and parse_dtype("fp64") is torch.float64
