"""The output_dir of a run (hf_saffu.output_dir): which checkpoint a resume reads."""

import pytest

from hf_saffu.output_dir import resolve_checkpoint


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("false", None), (False, None), ("run/x", "run/x")])
def test_resume_from_checkpoint_values(value, expected):
    assert resolve_checkpoint(value, "no-such-dir") == expected


def test_resume_true_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="holds no checkpoint"):
        resolve_checkpoint("True", str(tmp_path))
