"""Bad inputs beyond the core's own functions (those are in test_validation.py): the
training step and the torch adapter, the pseudo-label round, the loaders and the CLI.
Each case names the exception type and what the message must name (the argument or
the file); the Keras adapter runs the same label cases in tests/keras_backend."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from elta_core import apds, pseudo_labels, step  # noqa: E402
from elta_core.adapters.torch import ELTAWrapper, PseudoLabelledDataset, SelfTraining, to_distribution_head  # noqa: E402
from elta_core.data.labels import LabelFileError, load_labels  # noqa: E402
from tests.torch_models import TwoLayer, distributions  # noqa: E402

X = torch.randn(8, 4)


def _wrap(**options):
    return ELTAWrapper(TwoLayer(), "fc", **options)


STEP_AND_TORCH = [
    (ValueError, "tau1: expected a finite number > 0, got True", lambda: _wrap(tau1=True)),
    (ValueError, "num_pairs: expected a fraction", lambda: _wrap(num_pairs=1.5)),
    (ValueError, "mix_mode: expected 'append' or 'replace'", lambda: _wrap(mix_mode="x")),
    (ValueError, "output: expected one of", lambda: _wrap(output="softmax")),
    (ValueError, "bin_values: expected at least 2 finite values", lambda: _wrap(bin_values=[1.0])),
    (ValueError, "bin_values: expected increasing rating values", lambda: _wrap(bin_values=[3, 2, 1])),
    (ValueError, "score_scale: expected a finite number > 0", lambda: _wrap(score_scale=0)),
    (ValueError, "flsa_weight: expected a finite weight >= 0", lambda: _wrap(flsa_weight=float("inf"))),
    (ValueError, "flsa_weight: expected a finite weight >= 0", lambda: _wrap(flsa_weight=True)),
    (ValueError, "check_finite: expected True or False", lambda: _wrap(check_finite="yes")),
    (ValueError, "flsa_scope: expected 'local' or 'global'", lambda: _wrap(flsa_scope="world")),
    (ValueError, "seed: expected None, an int or a torch.Generator", lambda: _wrap(seed="x")),
    (ValueError, "config: give either config= or its fields", lambda: _wrap(config=step.ELTAConfig(), tfa=False)),
    (ValueError, "config: expected an elta_core.step.ELTAConfig", lambda: _wrap(config={"tfa": False})),
    (ValueError, "lr: not an option of ELTAWrapper", lambda: _wrap(lr=0.1)),
    (ValueError, "head: expected the name of the head module", lambda: ELTAWrapper(TwoLayer())),
    (ValueError, "model: expected a torch.nn.Module", lambda: ELTAWrapper(object(), "fc")),
    (ValueError, "backbone: pass either a model", lambda: ELTAWrapper(TwoLayer(), "fc", backbone=TwoLayer())),
    (ValueError, "y: expected scores \\(B,\\), \\(B, 1\\) or distributions", lambda: _wrap()(X, torch.ones(8, 2, 2))),
    (ValueError, "y: expected 8 labels to match the batch of x, got 7", lambda: _wrap()(X, torch.rand(7) * 9 + 1)),
    (ValueError, "y: expected scores on the rating scale of bin_values \\(1..10\\).*found 50..50", lambda: _wrap()(X, torch.full((8,), 50.0))),
    (ValueError, "y: expected score distributions whose rows sum to 1.*raw vote counts", lambda: _wrap()(X, distributions(8) * 30)),
    (ValueError, "y: expected non-negative score distributions", lambda: _wrap()(X, distributions(8) - 0.05)),
    (ValueError, "y: expected finite labels", lambda: _wrap()(X, torch.tensor([float("nan")] * 8))),
    (ValueError, "bin_values: expected 10 values, one per output level", lambda: _wrap(bin_values=range(1, 10))(X, torch.rand(8) * 5 + 1)),
    (ValueError, "y: expected distributions over the 9 levels of bin_values", lambda: _wrap(bin_values=range(1, 10))(X, distributions(8))),
    (ValueError, "output: 'probs' expects softmax rows", lambda: _wrap(output="probs")(X, distributions(8))),
    (ValueError, "head: the last nn.Linear of 'fc' has 10 outputs", lambda: to_distribution_head(TwoLayer(), "fc", 10)),
    (ValueError, "num_bins: expected at least 2 rating levels", lambda: to_distribution_head(TwoLayer(out=1), "fc", 1)),
    (ValueError, "head: TwoLayer has no submodule 'nope'", lambda: to_distribution_head(TwoLayer(out=1), "nope")),
    (ValueError, "labels: expected 2 pseudo-labels to match indices", lambda: PseudoLabelledDataset([], [1, 2], torch.eye(3))),
    (ValueError, "round2: expected 'concat' or 'separate'", lambda: SelfTraining(_wrap(), "unused", round2="both")),
    (ValueError, "max_pseudo_labels: expected 'labelled', an int", lambda: SelfTraining(_wrap(), "unused", max_pseudo_labels=1.5)),
    (ValueError, "stop_after: expected one of", lambda: SelfTraining(_wrap(), "unused").run([], [], [], stop_after="x")),
    (ValueError, "round1: expected 'train' or 'current'", lambda: SelfTraining(_wrap(), "unused").run([], [], [], round1="x")),
    (ValueError, "pool_logits: the unlabelled pool is empty",
     lambda: pseudo_labels.pseudo_label_round(torch.randn(20, 10), torch.rand(20) * 9 + 1, torch.zeros(0, 10))),
    (ValueError, "pool_logits: the model gave 9 levels for the pool and 10",
     lambda: pseudo_labels.pseudo_label_round(torch.randn(20, 10), torch.rand(20) * 9 + 1, torch.zeros(5, 9))),
    (ValueError, "labels: expected distributions over the logits' 10 levels, got 9",
     lambda: apds.grid_search(torch.randn(20, 10), distributions(20, num_bins=9))),
    (ValueError, "max_selected: expected an int >= 0",
     lambda: apds.keep_most_confident(np.zeros((3, 10)), apds.select(np.zeros((3, 10)), 1.0, 0.1), 1.0, -1)),
    (ValueError, "round2: expected 'concat' or 'separate'", lambda: pseudo_labels.check_round2("mixed")),
]


@pytest.mark.parametrize("kind,message,call", STEP_AND_TORCH,
                         ids=[f"{k}-{m.split(':')[0]}" for k, (_, m, _) in enumerate(STEP_AND_TORCH)])
def test_step_and_torch_adapter(kind, message, call):
    with pytest.raises(kind, match=message):
        call()


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


AVA_HEADER = "image_id," + ",".join(f"score{k}" for k in range(2, 12)) + "\n"
AVA_ROW = "{},0,1,2,3,4,5,4,3,2,1\n"
LOADERS = [
    (LabelFileError, "h.csv: no images: the file has no data rows", "h.csv", AVA_HEADER, "ava"),
    (LabelFileError, "e.csv: the file is empty", "e.csv", "", "ava"),
    (LabelFileError, "d: is a directory; expected a label file", "d/x.csv", AVA_HEADER, "ava"),
    (LabelFileError, "b.csv: line 3: not UTF-8 text", "b.csv", (AVA_HEADER + AVA_ROW.format(1)).encode() + b"\xff\xfe,1\n", "ava"),
    (LabelFileError, "u.csv: image '7.jpg' is listed twice \\(line 2 and line 4\\)", "u.csv",
     AVA_HEADER + AVA_ROW.format(7) + AVA_ROW.format(8) + AVA_ROW.format(7), "ava"),
    (FileNotFoundError, "labels: no such file", None, None, "ava"),
    (LabelFileError, "m.csv: line 1: missing column\\(s\\) score3, .* score11", "m.csv", "image_id,score2\n1,3\n", "ava"),
    (LabelFileError, "t.csv: line 3: score 11 outside the scale 1..10", "t.csv", "image,score\na.jpg,5\nb.jpg,11\n", "tad66k"),
    (LabelFileError, "a.txt: line 1: expected '<filename> <score>'", "a.txt", "x.jpg 0.5 extra\n", "aadb"),
    (LabelFileError, "n.csv: line 2: column 'score': expected a finite number, got 'nan'", "n.csv", "image,score\na.jpg,nan\n", "tad66k"),
    (LabelFileError, "z.csv: line 2: no votes", "z.csv", AVA_HEADER + "1,0,0,0,0,0,0,0,0,0,0\n", "ava"),
    (LabelFileError, "r.csv: line 2: negative vote count", "r.csv", AVA_HEADER + "1,-1,0,0,0,0,0,0,0,0,2\n", "ava"),
    (LabelFileError, "w.txt: line 1: expected 15 fields", "w.txt", "1 2 3\n", "ava-txt"),
    (ValueError, "format: expected one of ava", "f.csv", AVA_HEADER + AVA_ROW.format(1), "koniq"),
]


@pytest.mark.parametrize("kind,message,name,content,fmt", LOADERS, ids=[m.split(":")[0] for _, m, *_ in LOADERS])
def test_loaders(tmp_path, kind, message, name, content, fmt):
    path = tmp_path / "missing.csv" if name is None else _write(tmp_path / name, content)
    if name and "/" in name:
        path = path.parent
    with pytest.raises(kind, match=message):
        load_labels(path, fmt)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    pytest.importorskip("torchvision")
    from elta_core.data.synthetic import export, generate

    folder = tmp_path_factory.mktemp("tiny")
    return export(generate(12, 16, seed=1), folder), folder / "images"


def _cli(*argv) -> tuple[int, str]:
    import contextlib
    import io

    from elta_core.app.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse
            code = exit_.code
    return code, err.getvalue()


def _cli_cases(tmp: Path, labels: Path, images: Path) -> list[tuple[str, list]]:
    not_a_checkpoint = _write(tmp / "notes.pt", "just text")
    with open(tmp / "object.pt", "wb") as stream:
        pickle.dump({"model": object()}, stream)
    torch.save({"model": {}, "config": {"nope": 1}}, tmp / "old.pt")
    header_only = _write(tmp / "header.csv", AVA_HEADER)
    one_row = _write(tmp / "one.csv", AVA_HEADER + AVA_ROW.format(0))
    twice = _write(tmp / "twice.csv", AVA_HEADER + AVA_ROW.format(0) + AVA_ROW.format(1) + AVA_ROW.format(0))
    (tmp / "empty_pool").mkdir(exist_ok=True)
    a_file = _write(tmp / "a_file", "x")
    common = ["--labels", labels, "--format", "ava", "--images", images, "--quiet"]
    train = ["train", *common, "--image-size", "16", "--epochs", "1", "--batch-size", "4"]
    evaluate = ["evaluate", "--labels", labels, "--format", "ava", "--images", images, "--quiet"]
    return [
        ("notes.pt cannot be read", ["evaluate", "--checkpoint", not_a_checkpoint, *evaluate[1:]]),
        ("not loaded for safety", ["evaluate", "--checkpoint", tmp / "object.pt", *evaluate[1:]]),
        ("old.pt has an unknown configuration", ["evaluate", "--checkpoint", tmp / "old.pt", *evaluate[1:]]),
        ("checkpoint: no such file", ["evaluate", "--checkpoint", tmp / "none.pt", *evaluate[1:]]),
        ("header.csv: no images", ["stats", header_only, "--format", "ava", "--json"]),
        ("twice.csv: image '0.jpg' is listed twice \\(line 2 and line 4\\)", ["stats", twice, "--format", "ava"]),
        ("device: cuda:7 is not available", [*train, "--device", "cuda:7", "--out", tmp / "dev"]),
        ("argument --batch-size: expected an int >= 1, got 0", [*train[:-2], "--batch-size", "0", "--out", tmp / "b"]),
        ("argument --epochs: expected an int >= 1", ["train", *common, "--epochs", "0"]),
        ("out: .*a_file is a file", [*train, "--out", a_file]),
        ("images: is a directory; expected a label file", ["stats", images, "--format", "ava"]),
        ("at least 2 are needed to train", ["train", "--labels", one_row, "--format", "ava", "--images", images,
                                            "--quiet", "--image-size", "16", "--epochs", "1", "--val-fraction", "0.5",
                                            "--out", tmp / "few"]),
        ("unlabelled: --apds needs --unlabelled", [*train, "--apds", "--out", tmp / "apds"]),
        ("unlabelled: no images in", [*train, "--apds", "--unlabelled", tmp / "empty_pool", "--out", tmp / "pool"]),
        ("weights: .*notes.pt cannot be read as a state dict", [*train, "--weights", not_a_checkpoint, "--out", tmp / "w"]),
        ("backbone: unknown torchvision model 'resnet_nope'", [*train, "--backbone", "resnet_nope", "--out", tmp / "bb"]),
    ]


CLI_CASE_COUNT = 16


@pytest.mark.parametrize("case", range(CLI_CASE_COUNT))
def test_cli_errors_are_one_line_naming_the_file(tiny_dataset, tmp_path, case):
    labels, images = tiny_dataset
    cases = _cli_cases(tmp_path, labels, images)
    assert len(cases) == CLI_CASE_COUNT
    message, argv = cases[case]
    code, err = _cli(*argv)
    assert code == 2, (code, err)
    assert "Traceback" not in err and "weights_only=False" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and __import__("re").search(message, lines[-1]), err
    assert len(lines) == 1 or lines[0].startswith("usage:"), err  # argparse adds its usage


def test_worker_errors_are_one_line(tiny_dataset, tmp_path):
    labels, images = tiny_dataset
    broken = tmp_path / "images"
    broken.mkdir()
    for image in sorted(images.iterdir())[1:]:
        (broken / image.name).write_bytes(image.read_bytes())
    code, err = _cli("train", "--labels", labels, "--format", "ava", "--images", broken, "--quiet", "--image-size", "16",
                     "--epochs", "1", "--batch-size", "4", "--workers", "1", "--out", tmp_path / "run")
    assert code == 2 and "Traceback" not in err and "no such file" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("arguments,message", [
    (["--num-pairs", "nan"], "--num-pairs: expected a count >= 1 or a fraction of the batch in (0, 1), got nan"),
    (["--num-pairs", "inf"], "--num-pairs: expected a count >= 1 or a fraction of the batch in (0, 1), got inf"),
    (["--num-pairs", "2.5"], "--num-pairs: expected a count >= 1"),
    (["--flsa", "inf"], "--flsa: expected a finite weight >= 0, got inf"),
    (["--flsa", "-1"], "--flsa: expected a finite weight >= 0, got -1.0"),
    (["--min-selected", "nan"], "--min-selected: expected a count >= 1 or a fraction in (0, 1), got nan"),
    (["--min-selected", "inf"], "--min-selected: expected a count >= 1 or a fraction in (0, 1), got inf"),
    (["--min-selected", "0"], "--min-selected: expected a count >= 1 or a fraction in (0, 1), got 0.0"),
    (["--betas", "nan"], "--betas: expected comma-separated finite numbers >= 0"),
    (["--betas", "-1"], "--betas: expected comma-separated finite numbers >= 0"),
    (["--thresholds", "1.5"], "--thresholds: expected auto, paper, quantiles or comma-separated numbers in (0, 1]"),
    (["--seed", "-1"], "--seed: expected an int in [0, 4294967295], got -1"),
    (["--seed", "18446744073709551616"], "--seed: expected an int in [0, 4294967295]"),
    (["--image-size", "100000"], "--image-size: expected a side in [8, 4096] pixels, got 100000"),
])
def test_bad_numbers_are_refused_by_their_option_before_anything_is_written(tmp_path, capsys, arguments, message):
    from elta_core.app.cli import main

    labels = tmp_path / "labels.csv"
    labels.write_text("image,score\n" + "".join(f"{k}.jpg,{1 + k % 9}\n" for k in range(20)))
    out = tmp_path / "run"
    assert main(["train", "--labels", str(labels), "--format", "csv", "--out", str(out), "--apds", "--unlabelled",
                 str(tmp_path), *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "manifest" not in error
    assert not out.exists()


def test_a_scale_with_an_infinity_is_refused_by_name(tmp_path, capsys):
    from elta_core.app.cli import main

    labels = tmp_path / "labels.csv"
    labels.write_text("image,score\na.jpg,5\n")
    assert main(["stats", str(labels), "--format", "csv", "--scale", "1,inf"]) == 2
    assert "--scale: expected LOW,HIGH: two finite numbers with LOW < HIGH" in capsys.readouterr().err
