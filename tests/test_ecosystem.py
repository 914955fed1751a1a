"""What a Hugging Face user meets: dataset kinds, data sources, cards, generation, export, PEFT, lm-eval."""

import pytest
import torch
from factories import packed_dataset, saffu_config, training_arguments

from hf_saffu import ExplicitTrainer, SaffuForCausalLM
from hf_saffu.data import DataArguments

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the training data: every kind Trainer takes works or gets one line ------------------------------


def warm_started(tmp_path, train) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config())
    args = training_arguments(tmp_path, warm_start_only=True, output_dir=str(tmp_path / "out"))
    ExplicitTrainer(model=model, args=args, train_dataset=train).train()
    return model.state_dict()


class TorchBlocks(torch.utils.data.Dataset):
    """A map-style torch Dataset of packed blocks (tensors)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return {key: torch.tensor(value) for key, value in self.rows[index].items()}


def test_a_list_or_a_torch_dataset_warm_starts_as_the_datasets_dataset_does(tmp_path):
    train = packed_dataset(60)
    expected = warm_started(tmp_path / "a", train)
    rows = train.to_list()
    for index, given in enumerate([rows, TorchBlocks(rows)]):
        weights = warm_started(tmp_path / str(index), given)
        assert weights.keys() == expected.keys()
        assert all(torch.equal(weights[name], expected[name]) for name in expected), type(given).__name__


@pytest.mark.parametrize(
    "train, message",
    [
        ((row for row in [{"input_ids": [1, 2]}]), "got generator"),
        ({"input_ids": [[1, 2]]}, "got dict"),
        ([[1, 2, 3]], r"dicts with input_ids \(packed blocks\), got \['list'\]"),
    ],
)
def test_other_kinds_of_training_data_get_one_line_naming_what_is_supported(tmp_path, train, message):
    model = SaffuForCausalLM(saffu_config())
    args = training_arguments(tmp_path, warm_start_only=True)
    with pytest.raises(ValueError, match=message) as error:
        ExplicitTrainer(model=model, args=args, train_dataset=train).train()
    assert "\n" not in str(error.value)


# -- the data source ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["text", "json", "csv"])
def test_a_file_format_without_files_is_refused(name, tmp_path, monkeypatch):
    """`--dataset_name text` with no files would train on every text file of the current folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=f"dataset_name '{name}' is a file format, not a dataset.*train_files"):
        DataArguments(dataset_name=name)
    (tmp_path / name).mkdir()  # a local folder of that name is a dataset
    assert DataArguments(dataset_name=name).dataset_name == name
