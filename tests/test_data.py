"""Raw text datasets (hf_saffu.data): local files and saved dataset folders."""

import pytest
from datasets import Dataset, DatasetDict
from factories import write_lines

from hf_saffu.data import DataArguments, load_text_datasets


def test_empty_dataset_is_a_clear_error(tmp_path):
    blank = write_lines(tmp_path / "blank.txt", ["", "   "])
    with pytest.raises(ValueError, match="empty"):
        load_text_datasets(DataArguments(train_files=[blank]))


@pytest.mark.parametrize("kind", ["dataset", "dataset_dict"])
def test_dataset_name_reads_a_saved_dataset_folder(tmp_path, kind):
    lines = [f"document number {i}" for i in range(40)]
    folder = tmp_path / "saved"
    if kind == "dataset":
        Dataset.from_dict({"text": lines}).save_to_disk(folder)
    else:
        DatasetDict(
            {"train": Dataset.from_dict({"text": lines[:30]}), "validation": Dataset.from_dict({"text": lines[30:]})}
        ).save_to_disk(folder)
    raw = load_text_datasets(DataArguments(dataset_name=str(folder)))
    assert sorted([*raw["train"]["text"], *raw["validation"]["text"]]) == sorted(lines)
    if kind == "dataset_dict":
        assert list(raw["validation"]["text"]) == lines[30:]
