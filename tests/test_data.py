import json
import subprocess
import sys

import numpy as np
import pytest

from elta_core.data import FIGURE1_BINS, LabelFileError, load_labels, long_tail_summary
from elta_core.data.stats import figure1_counts
from elta_core.data.synthetic import generate


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_ava_csv(tmp_path):
    path = _write(tmp_path / "ava.csv", "image_id,score2,score3,score4,score5,score6,score7,score8,score9,score10,score11,tag1,tag2,tag3\n"
                  "953619,0,1,5,17,38,36,15,6,5,1,1,22,1396\n953958,10,7,15,26,26,21,10,8,1,2,4,3,1396\n")
    table = load_labels(path, "ava", image_root="imgs")
    assert table.images == ["imgs/953619.jpg", "imgs/953958.jpg"]
    counts = np.array([[0, 1, 5, 17, 38, 36, 15, 6, 5, 1], [10, 7, 15, 26, 26, 21, 10, 8, 1, 2]])
    np.testing.assert_allclose(table.distributions, counts / counts.sum(1, keepdims=True))
    np.testing.assert_allclose(table.scores, table.distributions @ np.arange(1, 11))


def test_ava_txt_with_split_lists(tmp_path):
    path = _write(tmp_path / "AVA.txt", "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396\n2 953958 10 7 15 26 26 21 10 8 1 2 4 3 1396\n3 954184 0 0 4 8 41 56 10 3 4 0 0 0 1396\n")
    train = _write(tmp_path / "generic_ls_train.jpgl", "953619\n954184\n")
    test = _write(tmp_path / "generic_test.jpgl", "953958\n")
    table = load_labels(path, "ava-txt", train_list=train, test_list=test)
    assert table.split == ["train", "test", "train"]
    assert len(table.where_split("train")) == 2
    bad = _write(tmp_path / "bad.txt", "1 953619 0 1 5 17 38 36 15 6 5 1 1 22\n")
    with pytest.raises(LabelFileError, match="line 1: expected 15 fields"):
        load_labels(bad, "ava-txt")


def test_tad66k_merged_and_per_theme(tmp_path):
    merged = _write(tmp_path / "merge.csv", "image,score\nhs_yin@152947873.jpg,1.9\nanimal2.jpg,7.25\n")
    table = load_labels(merged, "tad66k")
    assert table.images[0] == "hs_yin@152947873.jpg" and table.theme is None
    _write(tmp_path / "unmerge" / "animal.csv", "image,score\na.jpg,5.5\nb.jpg,6.0\n")
    _write(tmp_path / "unmerge" / "food.csv", "image,score\nc.jpg,3.0\n")
    themed = load_labels(tmp_path, "tad66k")
    assert themed.theme == ["animal", "animal", "food"]
    np.testing.assert_allclose(themed.scores, [5.5, 6.0, 3.0])


def test_aadb_folder_keeps_splits_and_rescales(tmp_path):
    _write(tmp_path / "imgListTrainRegression_score.txt", "farm1_a.jpg 0.6\nfarm1_b.jpg 0.1\n")
    _write(tmp_path / "imgListTestNewRegression_score.txt", "farm1_c.jpg 1.0\n")
    table = load_labels(tmp_path, "aadb")
    assert table.split == ["testnew", "train", "train"]
    np.testing.assert_allclose(table.scores_1_to_10(), [10.0, 6.4, 1.9])
    summary = long_tail_summary(table)
    assert summary["rescaled"] and summary["counts"] == figure1_counts(np.array([10.0, 6.4, 1.9]))


def test_para_half_step_bins(tmp_path):
    bins = ",".join(f"aestheticScore_{v:.1f}" for v in np.arange(1.0, 5.01, 0.5))
    header = f"userId,imageName,sessionId,aestheticScore_mean,aestheticScore_std,{bins}\n"
    _write(tmp_path / "PARA-GiaaTrain.csv", header + "u,a.jpg,s1,3.0,0.5,0,0,1,2,4,2,1,0,0\n")
    _write(tmp_path / "PARA-GiaaTest.csv", header + "u,b.jpg,s2,4.0,0.5,0,0,0,0,0,1,2,4,3\n")
    table = load_labels(tmp_path, "para")
    assert table.distributions.shape == (2, 9) and table.split == ["train", "test"]
    assert table.images[0].endswith("imgs/s1/a.jpg")
    np.testing.assert_allclose(table.bin_values, np.arange(1.0, 5.01, 0.5))
    assert table.scores[0] == pytest.approx(3.0)


def test_generic_csv_scores_and_counts(tmp_path):
    scores = load_labels(_write(tmp_path / "s.csv", "image,score\na.jpg,2.5\n"), "csv")
    assert scores.distributions is None and scores.scores[0] == 2.5
    counts = load_labels(_write(tmp_path / "c.csv", "image,c1,c2,c3\na.jpg,1,2,1\n"), "csv", scale=(1.0, 3.0))
    np.testing.assert_allclose(counts.distributions, [[0.25, 0.5, 0.25]])
    assert counts.scores[0] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "text,message,fmt",
    [
        ("image,scor\na.jpg,5\n", "line 1: missing column\\(s\\) score", "tad66k"),
        ("image,score\na.jpg,5\nb.jpg,high\n", "line 3: column 'score': expected a finite number, got 'high'", "csv"),
        ("image,score\na.jpg,11\n", "line 2: score 11 outside the scale 1..10", "csv"),
        ("image,c1,c2\na.jpg,1,-2\n", "line 2: negative vote count", "csv"),
        ("image,c1,c2\na.jpg,0,0\n", "line 2: no votes", "csv"),
        ("image,score\na.jpg\n", "line 2: expected 2 fields", "csv"),
    ],
)
def test_bad_label_files_name_the_line(tmp_path, text, message, fmt):
    with pytest.raises(LabelFileError, match=message):
        load_labels(_write(tmp_path / "bad.csv", text), fmt)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="format: expected one of"):
        load_labels(tmp_path / "x.csv", "koniq")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_labels(tmp_path / "missing.csv", "ava")


@pytest.mark.parametrize("name,fmt", [("ava", "ava"), ("tad66k", "tad66k")])
def test_elta_stats_on_real_files_prints_exact_counts(shared_data, name, fmt):
    path = shared_data / name / "test.csv"
    table = load_labels(path, fmt)
    edges = [0, 2, 3, 4, 5, 6, 7, 8]
    direct = [int(np.sum((table.scores >= lo) & (table.scores < hi))) for lo, hi in zip(edges, edges[1:])]
    direct.append(int(np.sum((table.scores >= 8) & (table.scores <= 10))))
    assert sum(direct) == len(table) == (12776 if name == "ava" else 14079)
    completed = subprocess.run([sys.executable, "-m", "elta_core", "stats", str(path), "--format", fmt, "--json"],
                               capture_output=True, text=True, check=True)
    summary = json.loads(completed.stdout)
    assert summary["bins"] == FIGURE1_BINS and summary["counts"] == direct
    printed = subprocess.run([sys.executable, "-m", "elta_core", "stats", str(path), "--format", fmt],
                             capture_output=True, text=True, check=True).stdout
    printed_rows = [line.split() for line in printed.splitlines() if line.strip().startswith(("[",))]
    assert [(row[0], int(row[1])) for row in printed_rows] == list(zip(FIGURE1_BINS, direct))


def test_stats_plot_and_bad_format(tmp_path, shared_data):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "hist.png"
    completed = subprocess.run([sys.executable, "-m", "elta_core", "stats", str(shared_data / "ava" / "test.csv"),
                                "--format", "ava", "--plot", str(plot)], capture_output=True, text=True)
    assert completed.returncode == 0 and plot.stat().st_size > 1000
    failed = subprocess.run([sys.executable, "-m", "elta_core", "stats", str(shared_data / "ava" / "test.csv"),
                             "--format", "tad66k"], capture_output=True, text=True)
    assert failed.returncode == 2 and "missing column(s) image, score" in failed.stderr


def test_synthetic_is_deterministic_and_long_tailed():
    a, b = generate(300, 32, seed=5), generate(300, 32, seed=5)
    assert a.images.tobytes() == b.images.tobytes() and np.array_equal(a.counts, b.counts)
    assert generate(300, 32, seed=6).images.tobytes() != a.images.tobytes()
    data = generate(3000, 32, seed=0)
    counts = dict(zip(FIGURE1_BINS, figure1_counts(data.scores)))
    share_middle = (counts["[4,5)"] + counts["[5,6)"] + counts["[6,7)"]) / len(data)
    share_low = (counts["[0,2)"] + counts["[2,3)"]) / len(data)
    share_high = (counts["[7,8)"] + counts["[8,10]"]) / len(data)
    assert share_middle > 0.85, "most images in [4, 7)"
    assert 0 < share_low < 0.03 and 0 < share_high < 0.06, "few below 3 or above 7, but some"
    assert counts["[5,6)"] == max(counts.values())
    # The score follows the visible mechanisms.
    assert np.corrcoef(data.attributes.mean(1), data.scores)[0, 1] > 0.9


def test_a_missing_optional_dependency_names_the_extra(monkeypatch):
    import builtins

    from elta_core.optional import MissingDependency, require

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.delitem(sys.modules, "matplotlib", raising=False)
    with pytest.raises(MissingDependency, match='pip install "elta-core\\[plot\\]"'):
        require("matplotlib", "plot")


def test_a_header_of_another_format_is_named(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("image,score\na.jpg,5.5\n")
    with pytest.raises(ValueError, match="This header looks like --format tad66k"):
        load_labels(path, "ava")


@pytest.mark.parametrize("fmt", ["csv", "tad66k"])
def test_a_space_after_the_commas_is_not_part_of_the_names_or_values(tmp_path, fmt):
    table = load_labels(_write(tmp_path / "s.csv", "image, score\na.jpg, 2.5\nb.jpg, 7\n"), fmt)
    assert table.distributions is None and table.scores.tolist() == [2.5, 7.0]
    assert [name.endswith("a.jpg") and not name.endswith(" a.jpg") for name in table.images][0]


@pytest.mark.parametrize("column", ["rating", "mos"])
def test_one_numeric_column_not_named_score_is_refused_not_read_as_votes(tmp_path, column):
    """One vote-count column would make every score the scale's lowest (1.0): refused,
    naming the column and --score-column; with it, the column is the scores."""
    path = _write(tmp_path / "s.csv", f"image,{column}\na.jpg,2.5\nb.jpg,7\n")
    with pytest.raises(LabelFileError, match=f"one column next to 'image', '{column}'.*--score-column {column}"):
        load_labels(path, "csv")
    assert load_labels(path, "csv", score_column=column).scores.tolist() == [2.5, 7.0]


def test_elta_stats_refuses_a_rating_column_in_one_line(tmp_path):
    path = _write(tmp_path / "s.csv", "image, rating\na.jpg, 2.5\nb.jpg, 7\n")
    done = subprocess.run([sys.executable, "-m", "elta_core", "stats", str(path), "--format", "csv"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--score-column rating" in done.stderr


@pytest.mark.parametrize("split", ["nan,0.5,0.5", "0.5,nan,0.5", "inf,0.5,0.5", "0.2,0.3,0.4"])
def test_synth_refuses_split_fractions_that_are_not_three_positive_numbers_summing_to_1(tmp_path, split):
    done = subprocess.run([sys.executable, "-m", "elta_core", "synth", "--out", str(tmp_path / "d"), "--count", "20",
                           "--split", split], capture_output=True, text=True)
    assert done.returncode == 2 and "splits: expected three positive fractions" in done.stderr
    assert not (tmp_path / "d" / "train.csv").exists()
