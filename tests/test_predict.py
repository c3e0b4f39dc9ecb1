"""Predictor and `cxrtl predict`: preprocessing from the checkpoint, temperature, masks, DICOM, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrtl.checkpoint import load_checkpoint, save_checkpoint
from cxrtl.cli import main
from cxrtl.data.image_io import apply_mask, prepare_image
from cxrtl.data.inputs import collect_inputs, find_masks
from cxrtl.data.preprocess import Preprocess, normalize_batch
from cxrtl.decisions import Temperature
from cxrtl.errors import CxrtlError
from cxrtl.inference.predict import Predictor, softmax
from cxrtl.transfer import create_model
from helpers import bomb_png, set_decisions

CLASSES = ["COVID", "Normal", "Viral Pneumonia"]


def make_run(
    root: Path,
    pp: Preprocess,
    backbone: str = "test_resnet",
    classes=CLASSES,
    seed: int = 0,
    temperature: float | None = None,
) -> Path:
    """A run directory with best.safetensors/.json of an untrained tiny model (and optional calibration)."""
    torch.manual_seed(seed)
    model = create_model(backbone, classes=classes, in_chans=pp.channels, init="none")
    root.mkdir(parents=True, exist_ok=True)
    weights = save_checkpoint(root / "best", model, {"preprocess": pp.to_dict(), "epoch": 1})
    if temperature is not None:
        set_decisions(weights, temperature=Temperature(temperature))
    return root


def radiograph(h: int = 48, w: int = 56, seed: int = 0) -> np.ndarray:
    """A smooth random uint8 image (two bright 'lungs' on a darker body) of size h x w."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    lungs = np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    lungs += np.exp(-(((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    img = 60 + 150 * lungs + rng.normal(0, 12, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def lung_mask(h: int = 48, w: int = 56) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    inside = (((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1) | (
        ((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    )
    return (inside * 255).astype(np.uint8)


def save_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def reference_probs(run: Path, grays, masks=None, temperature=None) -> np.ndarray:
    """Probabilities computed by hand from the checkpoint, the shared prepare_image and normalize_batch."""
    model, meta = load_checkpoint(run)
    pp = Preprocess.from_dict(meta["preprocess"])
    masks = masks or [None] * len(grays)
    batch = np.stack([prepare_image(g, pp, m) for g, m in zip(grays, masks)])
    with torch.inference_mode():
        logits = model(normalize_batch(torch.from_numpy(batch), pp)).numpy()
    return softmax(logits, temperature)


def torchvision_probs(run: Path, files, size: int) -> np.ndarray:
    """An independent reference: torchvision's ImageNet eval transform on the PNG as a PIL RGB image
    (pseudo-RGB), shorter side to round(size * 256 / 224), centre crop, ImageNet mean and std."""
    from torchvision import transforms

    tf = transforms.Compose(
        [
            transforms.Resize(round(size * 256 / 224), interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    model, _ = load_checkpoint(run)
    x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])
    with torch.inference_mode():
        return torch.softmax(model(x).double(), dim=1).numpy()


@pytest.fixture(scope="module")
def run3(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run3"), Preprocess(input="raw", channels=3, image_size=32))


def test_predict_matches_checkpoint_preprocessing(run3, tmp_path):
    grays = [radiograph(48, 56, seed=i) for i in range(3)]
    files = [save_png(tmp_path / f"im{i}.png", g) for i, g in enumerate(grays)]
    predictor = Predictor.from_checkpoint(run3)
    assert predictor.classes == CLASSES and predictor.temperature is None
    probs = predictor.predict(files, batch_size=2)
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, torchvision_probs(run3, files, 32), atol=1e-6)
    # arrays work as well as paths; a single image is accepted too
    np.testing.assert_allclose(predictor.predict(grays[0]), probs[:1], atol=1e-6)
    # run dir, .safetensors and .json all name the same checkpoint
    for path in (run3 / "best.safetensors", run3 / "best.json"):
        np.testing.assert_allclose(Predictor.from_checkpoint(path).predict(files), probs, atol=1e-6)


def test_predict_proba_is_predict(run3, tmp_path):
    grays = [radiograph(48, 56, seed=i) for i in range(3)]
    files = [save_png(tmp_path / f"im{i}.png", g) for i, g in enumerate(grays)]
    predictor = Predictor.from_checkpoint(run3)
    probs = predictor.predict_proba(files, batch_size=2)
    assert probs.shape == (3, len(predictor.classes)) and probs.dtype == np.float32
    np.testing.assert_array_equal(probs, predictor.predict(files, batch_size=2))
    np.testing.assert_array_equal(predictor.predict_proba(grays[0]), predictor.predict(grays[0]))


def test_damaged_preprocessing_is_a_one_line_error(tmp_path):
    # The ONNX path's InputSpec refused this with a CxrtlError; the PyTorch path's Preprocess raised a bare
    # ValueError (a traceback from `cxrtl predict`). One Preprocess now answers both the same way.
    model = create_model("test_resnet", classes=CLASSES, in_chans=3, init="none")
    damaged = {"input": "weird", "channels": 3, "image_size": 32}
    save_checkpoint(tmp_path / "best", model, {"preprocess": damaged})
    with pytest.raises(CxrtlError, match="unsupported preprocessing"):
        Predictor.from_checkpoint(tmp_path)


def rgb_with_rounding_ties(seed: int = 0) -> np.ndarray:
    """Random RGB pixels, three of them colours where 0.299/0.587/0.114 + np.rint and Pillow's "L" part."""
    rgb = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rgb[0, :3] = [[0, 4, 168], [0, 18, 131], [0, 22, 49]]
    return rgb


def test_rgb_array_gives_the_grey_of_its_png(run3, tmp_path):
    # predict had its own float RGB->grey that differed from Pillow's convert("L") by 1 on ~1 colour in 1800
    rgb = rgb_with_rounding_ties()
    png = save_png(tmp_path / "rgb.png", rgb)
    with Image.open(png) as im:
        want = np.asarray(im.convert("L"))
    np.testing.assert_array_equal(Predictor.from_checkpoint(run3).load(rgb), want)


def test_single_channel_other_size_and_temperature(tmp_path):
    pp = Preprocess(input="raw", channels=1, image_size=40)
    run = make_run(tmp_path / "run", pp, seed=1, temperature=2.5)
    grays = [radiograph(70, 50, seed=5), radiograph(64, 64, seed=6)]
    predictor = Predictor.from_checkpoint(run)
    assert predictor.temperature == 2.5 and predictor.spec.image_size == 40 and predictor.spec.channels == 1
    probs = predictor.predict(grays)
    np.testing.assert_allclose(probs, reference_probs(run, grays, temperature=2.5), atol=1e-6)
    assert not np.allclose(probs, reference_probs(run, grays), atol=1e-4)  # the temperature matters


def test_masked_model_needs_masks(tmp_path):
    run = make_run(tmp_path / "run", Preprocess(input="masked", channels=3, image_size=32), seed=2)
    gray, mask = radiograph(), lung_mask()
    predictor = Predictor.from_checkpoint(run)
    assert predictor.needs_mask
    with pytest.raises(CxrtlError, match="lung-masked"):
        predictor.predict([gray])
    probs = predictor.predict([gray], masks=[mask])
    np.testing.assert_allclose(probs, reference_probs(run, [gray], [mask]), atol=1e-6)
    # the mask really is applied: a masked-out copy of the image gives the same answer
    np.testing.assert_allclose(predictor.predict([apply_mask(gray, mask)], masks=[mask]), probs, atol=1e-6)

    img = save_png(tmp_path / "in" / "a.png", gray)
    save_png(tmp_path / "in" / "b.png", radiograph(seed=3))
    mdir = tmp_path / "masks"
    save_png(mdir / "a.png", mask)
    rows = predictor.predict_files(
        collect_inputs([tmp_path / "in"]), find_masks(collect_inputs([tmp_path / "in"]), mask_dir=mdir)
    )
    assert rows[0].path == str(img) and rows[0].error is None
    np.testing.assert_allclose(list(rows[0].probabilities.values()), probs[0], atol=1e-6)
    assert rows[1].probabilities is None and "mask" in rows[1].error


def test_dicom_and_png_of_the_same_image_agree(run3, tmp_path):
    from test_dicom import write_dicom

    gray = radiograph(48, 56, seed=9)
    png = save_png(tmp_path / "x.png", gray)
    dcm8 = write_dicom(tmp_path / "x8.dcm", gray)
    inv = write_dicom(tmp_path / "x_m1.dcm", 255 - gray, photometric="MONOCHROME1")
    raw16 = gray.astype(np.uint16) * 16 + 8  # 12-bit, displayed through a window covering 0..4095
    dcm16 = write_dicom(tmp_path / "x16.dcm", raw16, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    predictor = Predictor.from_checkpoint(run3)
    probs = predictor.predict([png, dcm8, inv, dcm16])
    np.testing.assert_array_equal(probs[1], probs[0])
    np.testing.assert_array_equal(probs[2], probs[0])
    np.testing.assert_allclose(probs[3], probs[0], atol=2e-3)


def test_cli_json_error_rows_and_exit_code(run3, tmp_path, capsys):
    from test_dicom import write_dicom

    good = [save_png(tmp_path / "in" / f"ok{i}.png", radiograph(seed=i)) for i in range(2)]
    data = good[0].read_bytes()
    (tmp_path / "in" / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "in" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 50)
    (tmp_path / "in" / "notes.txt").write_text("not an image")  # skipped inside a folder
    bomb = bomb_png(tmp_path / "bomb.png")
    nopix = write_dicom(tmp_path / "report.dcm", None)
    text = tmp_path / "named.png"
    text.write_text("named explicitly, so it gets an error row")
    rc = main(
        [
            "predict",
            str(run3),
            str(tmp_path / "in"),
            str(bomb),
            nopix,
            str(text),
            "--format",
            "json",
            "--batch-size",
            "2",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 1
    by_name = {Path(r["path"]).name: r for r in out}
    assert set(by_name) == {
        "ok0.png",
        "ok1.png",
        "truncated.png",
        "corrupt.jpg",
        "bomb.png",
        "report.dcm",
        "named.png",
    }
    for name in ("ok0.png", "ok1.png"):
        row = by_name[name]
        assert "error" not in row and row["label"] in CLASSES
        assert list(row["probabilities"]) == CLASSES
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-5
    for name in ("truncated.png", "corrupt.jpg", "bomb.png", "report.dcm", "named.png"):
        row = by_name[name]
        assert row["probabilities"] is None and row["label"] is None and row["error"], name
        assert "\n" not in row["error"]
    assert "bomb" in by_name["bomb.png"]["error"] and "pixel data" in by_name["report.dcm"]["error"]


def test_cli_table_csv_and_clean_exit(run3, tmp_path, capsys):
    files = [save_png(tmp_path / f"p{i}.png", radiograph(seed=i)) for i in range(2)]
    assert main(["predict", str(run3), *map(str, files)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["path", "label", "COVID"] and len(table) == 3 and "error" not in table[0]
    assert main(["predict", str(run3), str(files[0]), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "path,label,COVID,Normal,Viral Pneumonia,error" and len(lines) == 2


def test_cli_bad_model_and_no_images_are_one_line_errors(run3, tmp_path, capsys):
    img = save_png(tmp_path / "a.png", radiograph())
    assert main(["predict", str(tmp_path / "missing"), str(img)]) == 2
    assert main(["predict", str(run3), str(img), str(tmp_path / "typo.png")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(run3), str(tmp_path / "empty")]) == 2
    assert main(["predict", str(run3), str(img), "--cam-class", "Nope", "--cam", str(tmp_path / "c")]) == 2
    assert main(["predict", str(run3), str(img), "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("cxrtl: error:") == 5 and "typo.png" in err


def test_find_masks_by_name_and_stem(tmp_path):
    mdir = tmp_path / "m"
    save_png(mdir / "a.png", lung_mask())
    save_png(mdir / "b.png", lung_mask())
    images = [tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png"]
    assert find_masks(images, mask_dir=mdir) == [mdir / "a.png", mdir / "b.png", None]
    with pytest.raises(CxrtlError, match="one image"):
        find_masks(images, mask=mdir / "a.png")
