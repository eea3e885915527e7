"""The training data path: ``elta prepare`` (resumable, same pixels), seeded augmentation
(the result does not depend on the number of workers), ``--precision``,
``--channels-last`` and ``--compile``."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from elta_core.adapters.torch.data import ImageLabelDataset, iaa_transforms  # noqa: E402
from elta_core.app import cli, prepare as prepare_module  # noqa: E402
from elta_core.data import load_labels  # noqa: E402
from elta_core.data.synthetic import export, generate  # noqa: E402
from elta_core.io import TEMPORARY_SUFFIX  # noqa: E402


@pytest.fixture(scope="module")
def png_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("png")
    data = generate(40, 48, seed=2)
    export(data, folder, suffix=".png")  # lossless: prepared pixels compare exactly
    rows = ["image,score"] + [f"{k}.png,{score:.4f}" for k, score in enumerate(data.scores)]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


LABELS = ["--format", "csv"]


def _table(folder, images=None):
    return load_labels(folder / "labels.csv", "csv", image_root=images or folder / "images")


def test_prepare_resumes_after_a_crash_and_refuses_another_size(png_data, tmp_path, monkeypatch):
    out = tmp_path / "prepared"
    table = _table(png_data)
    real_write, calls = prepare_module.atomic_write, {"n": 0}

    def crashing(path, write):
        calls["n"] += 1
        if calls["n"] == 15:  # a crash inside the 15th write leaves its temporary file behind
            (path.parent / f".{path.name}.x{TEMPORARY_SUFFIX}").write_bytes(b"half")
            raise KeyboardInterrupt
        return real_write(path, write)

    monkeypatch.setattr(prepare_module, "atomic_write", crashing)
    with pytest.raises(KeyboardInterrupt):
        prepare_module.prepare(table, str(png_data / "images"), out, 40, progress=False)
    monkeypatch.setattr(prepare_module, "atomic_write", real_write)
    result = prepare_module.prepare(table, str(png_data / "images"), out, 40, progress=False)
    assert result["already_there"] == 14 and result["written"] == 26 and not result["unreadable"]
    assert not list((out / "images").glob(f"*{TEMPORARY_SUFFIX}"))
    with pytest.raises(ValueError, match=r"size: 40 -> 32"):
        prepare_module.prepare(table, str(png_data / "images"), out, 32, progress=False)


def test_prepared_images_give_the_training_transform_the_same_pixels(png_data, tmp_path):
    assert cli.main(["prepare", "--labels", str(png_data / "labels.csv"), *LABELS, "--images",
                     str(png_data / "images"), "--size", "40", "--out", str(tmp_path / "p"), "--quiet"]) == 0
    transform = iaa_transforms(True, 32, resize=40)
    original = ImageLabelDataset(_table(png_data), transform, seed=5)
    prepared = ImageLabelDataset(_table(png_data, tmp_path / "p" / "images"), transform, seed=5)
    for dataset in (original, prepared):
        dataset.set_epoch(3)
    for k in (0, 7, 39):
        assert torch.equal(original[k][0], prepared[k][0])


def _train(folder, out, *extra):
    return cli.main(["train", "--labels", str(folder / "labels.csv"), *LABELS, "--images",
                     str(folder / "images"), "--backbone", "resnet18", "--image-size", "32", "--batch-size", "8",
                     "--epochs", "2", "--quiet", "--out", str(out), *extra])


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_the_number_of_workers_does_not_change_the_result(png_data, tmp_path):
    assert _train(png_data, tmp_path / "w0", "--workers", "0") == 0
    assert _train(png_data, tmp_path / "w2", "--workers", "2") == 0
    a, b = _weights(tmp_path / "w0" / "checkpoint.pt"), _weights(tmp_path / "w2" / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_channels_last_and_fp16_train(png_data, tmp_path):
    assert _train(png_data, tmp_path / "bf16", "--precision", "bf16", "--channels-last") == 0
    config = json.loads((tmp_path / "bf16" / "manifest.json").read_text())["config"]
    assert config["precision"] == "bf16" and "channels_last" not in config  # layout does not change a result
    assert _train(png_data, tmp_path / "fp16", "--precision", "fp16", "--epochs", "1") == 0
    for run in ("bf16", "fp16"):
        weights = _weights(tmp_path / run / "checkpoint.pt")
        assert all(v.dtype in (torch.float32, torch.int64) for v in weights.values())  # autocast, not a cast
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_an_fp16_run_resumed_from_its_checkpoint_equals_the_uninterrupted_run(png_data, tmp_path, monkeypatch):
    """fp16's gradient scaler carries its scale from epoch to epoch, so the checkpoint keeps
    it: a scaler that starts far too high (its first steps overflow and are skipped while
    the scale comes down) would otherwise start high again on --resume, skip those steps
    again and train another model."""
    scaler = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *args, **kwargs: scaler(*args, init_scale=2.0 ** 24, **kwargs))
    # timm's test ResNet: fp16's backward on a CPU is slow, and resnet18's took 90 s of the suite here
    fp16 = ("--precision", "fp16", "--epochs", "3", "--workers", "0", "--lr-schedule", "constant",
            "--backbone", "timm/test_resnet")
    assert _train(png_data, tmp_path / "straight", *fp16) == 0
    assert _train(png_data, tmp_path / "resumed", *fp16, "--stop-after-epoch", "2") == 0
    saved = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["grad_scaler"]
    assert saved["scale"] < 2.0 ** 24  # it came down, and the checkpoint says so
    assert _train(png_data, tmp_path / "resumed", *fp16, "--resume") == 0
    a, b = _weights(tmp_path / "straight" / "checkpoint.pt"), _weights(tmp_path / "resumed" / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compile_finds_the_head_through_the_compiled_module(png_data, tmp_path, monkeypatch):
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: compile_(model, backend="eager"))  # no C++ build in CI
    assert _train(png_data, tmp_path / "compiled", "--compile", "--epochs", "1") == 0
    assert json.loads((tmp_path / "compiled" / "metrics.json").read_text())["num_images"] == 4


def test_the_prepare_progress_bar_iterates_the_loader_once(png_data, tmp_path, monkeypatch):
    iterations = []

    class CountingLoader(prepare_module.DataLoader):
        def __iter__(self):
            iterations.append(1)  # tqdm.auto's asyncio variant started a second, wasted pass of the workers
            return super().__iter__()

    monkeypatch.setattr(prepare_module, "DataLoader", CountingLoader)
    result = prepare_module.prepare(_table(png_data), str(png_data / "images"), tmp_path / "p", 40, progress=True)
    assert iterations == [1] and result["written"] == 40


def test_a_16_bit_grayscale_png_is_scaled_by_its_bit_depth(tmp_path):
    """Pillow's convert('RGB') clips I;16 values at 255: the image read 97 % white."""
    from PIL import Image

    from elta_core.adapters.torch.data import open_image

    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # 0 .. 65,520
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # uint16: mode I;16
    pixels = np.asarray(open_image(str(tmp_path / "deep.png")))
    assert pixels.shape == (64, 64, 3)
    np.testing.assert_allclose(pixels[..., 0], np.rint(ramp / 65535 * 255), atol=1)
    assert (pixels == 255).mean() < 0.01


def test_prepare_redoes_a_copy_whose_source_changed_and_refuses_to_overwrite_the_sources(png_data, tmp_path):
    import os
    import shutil

    images = tmp_path / "src" / "images"
    shutil.copytree(png_data / "images", images)
    table = _table(png_data, images)
    out = tmp_path / "prepared"
    assert prepare_module.prepare(table, str(images), out, 24, progress=False)["written"] == 40
    source = images / table.images[3].split("/")[-1]
    source.write_bytes((images / table.images[4].split("/")[-1]).read_bytes())  # new pixels, same name
    later = (out / "images" / source.name).stat().st_mtime_ns + 10**9
    os.utime(source, ns=(later, later))
    result = prepare_module.prepare(table, str(images), out, 24, progress=False)
    assert (result["written"], result["already_there"]) == (1, 39)  # before: "40 already there", the stale copy kept
    with pytest.raises(ValueError, match="is where the images themselves are"):
        prepare_module.prepare(table, str(images), images.parent, 24, progress=False)  # OUT/images is --images


def test_prepare_knows_its_copies_by_content_not_by_modification_time(png_data, tmp_path):
    import os
    import shutil

    from elta_core.app.run.directory import images_fingerprint

    images = tmp_path / "src" / "images"
    shutil.copytree(png_data / "images", images)
    table = _table(png_data, images)
    out = tmp_path / "prepared"
    prepare_module.prepare(table, str(images), out, 24, progress=False)
    copies = out / "images"
    names = [image.split("/")[-1] for image in table.images]
    prepared = [str(copies / name) for name in names]
    first = images_fingerprint(prepared, str(copies))

    # A source restored from a backup: other pixels, an mtime older than its copy (cp -p).
    source, copy = images / names[3], copies / names[3]
    old = copy.stat().st_mtime_ns - 10**12
    source.write_bytes((images / names[4]).read_bytes())
    os.utime(source, ns=(old, old))
    result = prepare_module.prepare(table, str(images), out, 24, progress=False)
    assert (result["written"], result["already_there"]) == (1, 39), "the stale copy was kept (mtime rule)"
    assert copy.read_bytes() == (copies / names[4]).read_bytes()
    assert images_fingerprint(prepared, str(copies)) != first, "a copy with other content is another input"

    # A source touched, same bytes: its copy stands, unwritten.
    second = images_fingerprint(prepared, str(copies))
    before = (copies / names[7]).stat().st_mtime_ns
    os.utime(images / names[7])
    result = prepare_module.prepare(table, str(images), out, 24, progress=False)
    assert (result["written"], result["already_there"]) == (0, 40)
    assert (copies / names[7]).stat().st_mtime_ns == before

    # A copy deleted and prepared again, to the same bytes: a resumed run sees the same input.
    (copies / names[9]).unlink()
    assert prepare_module.prepare(table, str(images), out, 24, progress=False)["written"] == 1
    assert images_fingerprint(prepared, str(copies)) == second, "same content, only a new mtime"

    # A copy altered behind prepare's back is made again, and until then it is another input.
    damaged = copies / names[11]
    data = bytearray(damaged.read_bytes())
    data[-20] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert images_fingerprint(prepared, str(copies)) != second
    assert prepare_module.prepare(table, str(images), out, 24, progress=False)["written"] == 1
    assert images_fingerprint(prepared, str(copies)) == second


def test_a_photo_with_an_exif_orientation_is_read_upright(tmp_path):
    """A phone stores a portrait photo sideways with EXIF orientation 6 (rotate 90 degrees
    clockwise to view): it is read as a person sees it, as torchvision users expect."""
    from PIL import Image

    from elta_core.adapters.torch.data import open_image

    upright = np.zeros((40, 20, 3), dtype=np.uint8)  # portrait: 40 high, 20 wide
    upright[:10] = 255  # a white top
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as the sensor wrote it: 20 x 40
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    pixels = np.asarray(open_image(str(tmp_path / "phone.jpg")))
    assert pixels.shape == (40, 20, 3)
    assert pixels[:8].mean() > 200 and pixels[12:].mean() < 50


def test_an_image_over_the_decompression_bomb_limit_is_unreadable_and_skipped(tmp_path, monkeypatch):
    from PIL import Image

    from elta_core.adapters.torch.data import UnreadableImageError, open_image

    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 pixels: over twice the limit, an error
    with pytest.raises(UnreadableImageError, match="decompression-bomb limit.*--skip-unreadable"):
        open_image(str(tmp_path / "big.png"))
    (tmp_path / "labels.csv").write_text("image,score\nbig.png,5\n")
    table = load_labels(tmp_path / "labels.csv", "csv", image_root=tmp_path)
    assert ImageLabelDataset(table, skip_unreadable=True).skipped == [str(tmp_path / "big.png")]
