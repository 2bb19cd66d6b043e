"""The registry: spec parsing, and one ConfigError for a bad keyword in a spec."""

import pytest

from medjax import errors, registry
from medjax.augment import compose
from medjax.data import synthetic


def test_parse_spec_reads_literals_only():
    assert registry.parse_spec(" flip(axes=(0, 1), p=0.5) ") == ("flip", {"axes": (0, 1), "p": 0.5})
    assert registry.parse_spec("dice") == ("dice", {})
    with pytest.raises(errors.ConfigError, match="Bad component spec"):
        registry.parse_spec("flip(axes=__import__('os'))")


def test_bad_augment_keyword_is_one_config_error_listing_the_accepted_ones():
    spec = "brightness_contrast(p=0.5, bogus=1)"
    with pytest.raises(errors.ConfigError) as info:
        compose.compose([spec])
    message = str(info.value)
    assert spec in message and "bogus" in message
    # The accepted keywords, as the factory's signature names them.
    for name in ("p", "brightness_limit", "contrast_limit", "clip"):
        assert name in message
    assert not isinstance(info.value.__cause__, TypeError)
    # The mapping form of a spec goes through the same check.
    with pytest.raises(errors.ConfigError, match="bogus"):
        compose.build({"name": "brightness_contrast", "bogus": 1})


@pytest.mark.parametrize(
    ("namespace", "name", "config_key"),
    [
        ("models", "unet", "model.kwargs"),
        ("losses", "dice_ce", "loss.kwargs"),
        ("crawlers", "segmentation_file", "data.crawler_kwargs"),
    ],
)
def test_bad_config_kwargs_name_the_key_and_the_accepted_keywords(namespace, name, config_key):
    with pytest.raises(errors.ConfigError) as info:
        registry.lookup(namespace, name, not_a_keyword=3)
    message = str(info.value)
    assert config_key in message and "not_a_keyword" in message and name in message


def test_unet_error_lists_its_keywords_and_good_ones_still_build():
    with pytest.raises(errors.ConfigError, match=r"accepts: .*in_channels.*out_channels.*depth"):
        registry.lookup("models", "unet", dept=2)
    assert registry.lookup("models", "unet", depth=2).features == (16, 32)


def test_synthetic_kwargs_are_checked_before_generating(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDJAX_CACHE", str(tmp_path))
    with pytest.raises(errors.ConfigError, match=r"data.synthetic_kwargs.*sise.*accepts: size"):
        synthetic.ensure_dataset("spine2d", sise=64)
    assert not (tmp_path / "datasets").exists()
