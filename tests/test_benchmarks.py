"""Benchmark converters: published layouts in, the data contract out; bad layouts refused."""

from __future__ import annotations

import json
import shutil

import pytest
from benchmark_fixtures import FIU_IDS, write_clear, write_fiubench, write_mllmu

from hf_cagul.data import validate_dataset
from hf_cagul.data.benchmarks import (
    BenchmarkLayoutError,
    load_benchmark,
    load_clear,
    load_fiubench,
    load_mllmu,
    training_set,
)


def test_fiubench_converts_faces_qa_and_split_lists(tmp_path) -> None:
    splits = load_fiubench(write_fiubench(tmp_path), "forget10")
    for split in ("forget", "retain"):
        validate_dataset(splits[split], require_both_splits=False)
    validate_dataset(training_set(splits))
    assert sorted(set(splits["forget"]["subject"])) == sorted(FIU_IDS[:2])
    assert sorted(set(splits["retain"]["subject"])) == sorted(FIU_IDS[2:])
    row = splits["forget"][0]
    assert row["keywords"] == ["city 0"]
    assert row["perturbed_answers"] == ["born in paris .", "born in rome ."]
    assert row["paraphrased_answer"] == "the birthplace is city 0 ."
    assert set(splits["forget"]["split"]) == {"forget"}


def test_fiubench_forget1_leaves_other_forget_faces_out_of_retain(tmp_path) -> None:
    splits = load_fiubench(write_fiubench(tmp_path), "forget1")
    assert set(splits["forget"]["subject"]) == {FIU_IDS[0]}
    # FIU_IDS[1] is in forget10 only: neither forgotten nor kept (as the published code).
    assert set(splits["retain"]["subject"]) == set(FIU_IDS[2:])


def test_fiubench_bad_layouts_name_the_expected_layout(tmp_path) -> None:
    root = write_fiubench(tmp_path / "a")
    with pytest.raises(BenchmarkLayoutError, match=r"no list 'forget3'(.|\n)*full.json"):
        load_fiubench(root, "forget3")
    (root / "dataset" / "split.json").unlink()
    with pytest.raises(BenchmarkLayoutError, match=r"has no split.json(.|\n)*Expected layout"):
        load_fiubench(root)
    root = write_fiubench(tmp_path / "b")
    (root / "dataset" / "split.json").write_text(json.dumps({"forget10": ["44363"]}))
    with pytest.raises(BenchmarkLayoutError, match="'44363', not 8 digits"):
        load_fiubench(root)
    root = write_fiubench(tmp_path / "c")
    (root / "dataset" / "images" / f"{FIU_IDS[0]}.png").unlink()
    with pytest.raises(BenchmarkLayoutError, match=f"image of face {FIU_IDS[0]}"):
        load_fiubench(root)


def test_mllmu_converts_the_three_tasks_image_textual_only(tmp_path) -> None:
    splits = load_mllmu(write_mllmu(tmp_path, 10), "forget_10")
    validate_dataset(training_set(splits))
    forget = splits["forget"]
    assert sorted(forget["task"]) == ["fill_blank", "generation", "multiple_choice"]
    assert len(splits["retain"]) == 6  # 2 profiles x 3 image-textual questions
    choice = forget.filter(lambda row: row["task"] == "multiple_choice")[0]
    assert choice["options"] == ["a doctor", "a pilot", "a teacher", "a farmer"]
    assert choice["correct_option"] == 1
    assert choice["answer"] == "a pilot"
    blank = forget.filter(lambda row: row["task"] == "fill_blank")[0]
    assert blank["question"] == "this person lives in [Blank] ."
    assert blank["answer"] == "paris"
    # Pure-text questions carry no image: not converted.
    assert not any(question.startswith("where does 1") for question in forget["question"])
    assert set(training_set(splits)["task"]) == {"generation"}


def test_mllmu_bad_layouts(tmp_path) -> None:
    root = write_mllmu(tmp_path / "a", 5)
    with pytest.raises(BenchmarkLayoutError, match=r"no parquet files in forget_10/"):
        load_mllmu(root, "forget_10")
    with pytest.raises(BenchmarkLayoutError, match="'forget_7' is not one of forget_5"):
        load_mllmu(root, "forget_7")
    assert len(load_mllmu(root, "forget5")["forget"]) == 3  # "forget5" means forget_5

    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "b"
    write_mllmu(bad, 10)
    shutil.rmtree(bad / "forget_10")
    (bad / "forget_10").mkdir()
    pq.write_table(
        pa.Table.from_pylist([{"ID": "1", "photo": b"x"}]), bad / "forget_10" / "x.parquet"
    )
    with pytest.raises(BenchmarkLayoutError, match=r"lack \['image'\](.|\n)*Mask_Task"):
        load_mllmu(bad)

    from benchmark_fixtures import mllmu_profile

    broken = mllmu_profile("9", 9)
    del broken["Generation_Task"][0]["Question"]
    shutil.rmtree(bad / "forget_10")
    (bad / "forget_10").mkdir()
    pq.write_table(pa.Table.from_pylist([broken]), bad / "forget_10" / "x.parquet")
    with pytest.raises(BenchmarkLayoutError, match=r"profile 9 in forget_10/ is malformed"):
        load_mllmu(bad)


def test_clear_converts_name_and_caption_rows_with_perturbed_answers(tmp_path) -> None:
    splits = load_clear(write_clear(tmp_path), "forget10")
    validate_dataset(training_set(splits))
    forget = splits["forget"]
    assert forget["answer"] == ["zed", "zed smiles in a red room ."]
    assert forget["perturbed_answers"] == [["anna", "bob"], ["a man sits .", "a woman runs ."]]
    assert forget["keywords"] == [["zed"], ["zed"]]
    assert "perturbed_answers" not in splits["retain"].column_names  # plain retain90
    assert sorted(set(splits["retain"]["subject"])) == ["amy", "max"]


def test_clear_without_perturbed_configs_and_bad_layouts(tmp_path) -> None:
    splits = load_clear(write_clear(tmp_path / "a", perturbed_forget=False), "forget10")
    assert "perturbed_answers" not in splits["forget"].column_names
    with pytest.raises(BenchmarkLayoutError, match=r"no parquet files in forget05/"):
        load_clear(tmp_path / "a", "forget05")
    with pytest.raises(BenchmarkLayoutError, match="not one of forget01"):
        load_clear(tmp_path / "a", "forget50")


def test_load_benchmark_dispatches_and_reads_a_hub_dataset(tmp_path, fake_hub) -> None:
    root = write_clear(tmp_path / "clear")
    files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.parquet")}
    fake_hub.seed("someone/clear-copy", files, repo_type="dataset")
    from_hub = load_benchmark("clear", "someone/clear-copy", "forget10")
    assert from_hub["forget"]["answer"] == load_clear(root)["forget"]["answer"]
    with pytest.raises(OSError, match="No dataset repo 'someone/missing'"):
        load_benchmark("clear", "someone/missing")
    with pytest.raises(ValueError, match="Unknown benchmark 'tofu'"):
        load_benchmark("tofu", str(root))
    with pytest.raises(ValueError, match="needs its data"):
        load_benchmark("fiubench")
    synthetic = load_benchmark("synthetic")
    validate_dataset(training_set(synthetic))
