"""``entropy_bound``'s config section: defaults, validation with full dotted keys, and composition."""

from __future__ import annotations

import pytest

from dlm_decode.config import load_config
from dlm_decode.errors import ConfigError, FieldError
from dlm_decode_eb_sampler import EntropyBoundConfig, ErrorProxy


def test_defaults():
    config = EntropyBoundConfig()
    assert (config.gamma, config.score, config.max_tokens) == (0.1, ErrorProxy.entropy, None)


@pytest.mark.parametrize(("kwargs", "field"), [({"gamma": -0.1}, "gamma"), ({"max_tokens": 0}, "max_tokens")])
def test_out_of_range_values_name_their_field(kwargs, field):
    with pytest.raises(FieldError) as info:
        EntropyBoundConfig(**kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("decoder.verification.gamma=-1", "decoder.verification.gamma"),
        ("decoder.verification.max_tokens=0", "decoder.verification.max_tokens"),
        ("decoder.verification.score=random", "decoder.verification.score"),
        ("decoder.verification.threshold=0.9", "decoder.verification.threshold"),
    ],
)
def test_bad_values_in_a_config_name_the_dotted_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config({"decoder": {"verification": {"name": "entropy_bound"}}}, [override])
    assert info.value.key == key


def test_yaml_values_are_typed(tmp_path):
    path = tmp_path / "eb.yaml"
    path.write_text("decoder:\n  verification: {name: entropy_bound, gamma: 0.5, score: margin, max_tokens: 3}\n")
    name, params = load_config(path).strategies["verification"]
    assert name == "entropy_bound"
    assert params == EntropyBoundConfig(gamma=0.5, score=ErrorProxy.margin, max_tokens=3)


def test_naming_it_replaces_the_previous_verification_section(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("decoder:\n  verification: {name: topk, score: margin, tokens_per_step: 4}\n")
    overlay = tmp_path / "eb.yaml"
    overlay.write_text("decoder:\n  verification: {name: entropy_bound, gamma: 0.5}\n")
    # topk's `score: margin` and `tokens_per_step` must not leak into entropy_bound's section.
    assert load_config([base, overlay]).strategies["verification"] == ("entropy_bound", EntropyBoundConfig(gamma=0.5))
    assert load_config(base, ["decoder.verification=entropy_bound"]).strategies["verification"] == (
        "entropy_bound",
        EntropyBoundConfig(),
    )
