"""Generic safety callbacks (hf_saffu.callbacks): the divergence guard."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from factories import job_arguments
from safetensors.torch import load_file

from hf_saffu.errors import NonFiniteError
from hf_saffu.train import run_training

pytestmark = pytest.mark.usefixtures("one_thread")


def test_diverging_run_stops_and_nothing_nan_is_saved(tmp_path):
    """learning_rate=1e30 makes the weights NaN at some step N > 1: the run stops there, before that step is
    logged or saved; the checkpoints of steps 1 .. N - 1 stay (finite), and no model or results are written."""
    model_args, data_args, training_args = job_arguments(tmp_path, learning_rate=1e30, max_steps=4, save_steps=1)
    with pytest.raises(
        NonFiniteError, match=r"the model after optimizer step \d \(learning_rate=1e\+30\) holds NaN"
    ) as error:
        run_training(model_args, data_args, training_args)
    step = int(re.search(r"optimizer step (\d)", str(error.value)).group(1))
    assert step > 1
    output_dir = Path(training_args.output_dir)
    assert sorted(p.name for p in output_dir.iterdir()) == [f"checkpoint-{n}" for n in range(1, step)]
    for checkpoint in output_dir.iterdir():
        assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values())
        history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
        assert all(math.isfinite(value) for entry in history for value in entry.values())
