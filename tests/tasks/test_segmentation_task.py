"""tasks.segmentation: a patch that cannot fit the training cases is refused in one line."""

import pytest

from medjax import errors
from medjax.tasks import segmentation


def test_patch_up_to_twice_the_largest_case_is_accepted():
    shapes = [(16, 32, 30), (12, 24, 32)]  # largest per axis: (16, 32, 32)
    segmentation.check_patch_size((16, 32, 32), shapes)
    segmentation.check_patch_size((8, 16, 16), shapes)  # sampled from inside the cases
    # A planner rounds a patch up to what the UNet can pool: padding, but under half of it.
    segmentation.check_patch_size((24, 32, 48), shapes)
    segmentation.check_patch_size((31, 63, 63), shapes)


@pytest.mark.parametrize("patch", [(256, 256, 256), (16, 32, 64), (32, 8, 8)])
def test_patch_twice_the_largest_case_names_the_key_and_the_largest_fit(patch):
    shapes = [(16, 32, 30), (12, 24, 32)]
    with pytest.raises(errors.ConfigError) as e:
        segmentation.check_patch_size(patch, shapes)
    message = str(e.value)
    assert f"data.patch_size={patch}" in message
    assert "(16, 32, 32)" in message and "--config.data.patch_size='(16, 32, 32)'" in message
    assert "\n" not in message


def test_patch_with_the_wrong_number_of_axes_is_refused():
    with pytest.raises(errors.ConfigError, match=r"data.patch_size=\(64, 64, 64\) has 3 axes"):
        segmentation.check_patch_size((64, 64, 64), [(32, 32), (32, 32)])
