"dbgan-eval end to end on small temp trees: CSV values against scikit-image/scipy, exit codes, messages naming files."
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage.data
from PIL import Image
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dbgan_nb import metrics
from dbgan_nb.metrics import PROTOCOL, eval_cli

NAMES = ["SEQ_A/000001.png", "SEQ_A/000002.png", "SEQ_B/000001.png"]  # 000001 exists in both sequences


def save_png(path: Path, image: np.ndarray) -> None:
    "Write an RGB uint8 image with PIL (independent of dbgan_nb.data)."
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    "Gaussian blur of each channel, rounded to uint8."
    return np.clip(np.rint(ndimage.gaussian_filter(image.astype(np.float64), (sigma, sigma, 0))), 0, 255).astype(np.uint8)


def noisy(image: np.ndarray, seed: int) -> np.ndarray:
    "The image with Gaussian noise of sigma 6, rounded to uint8."
    noise = np.random.default_rng(seed).normal(0, 6, image.shape)
    return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)


def reference_metrics(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    "PSNR and ssim2d from scikit-image; ssim_matlab from scipy's 3-D Gaussian filter with replicate padding."
    psnr = peak_signal_noise_ratio(gt, pred, data_range=255)
    ssim2d = structural_similarity(pred, gt, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, data_range=255)
    x, y = pred.astype(np.float64), gt.astype(np.float64)
    window = lambda v: ndimage.gaussian_filter(v, sigma=1.5, mode="nearest", truncate=5 / 1.5)  # 11 taps per axis
    mx, my = window(x), window(y)
    vx, vy, cxy = window(x * x) - mx**2, window(y * y) - my**2, window(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_matlab = np.mean((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return [psnr, ssim2d, float(ssim_matlab)]


@pytest.fixture
def gopro(tmp_path):
    "A native-layout GoPro tree (test split, two sequences) of real photo crops; returns root and name -> images."
    photos = [skimage.data.astronaut()[100:148, 180:244], skimage.data.chelsea()[60:108, 150:214],
              skimage.data.coffee()[120:168, 200:264]]
    root, images = tmp_path / "GOPRO", {}
    for i, (name, sharp) in enumerate(zip(NAMES, photos)):
        sequence, file = name.split("/")
        images[name] = {"sharp": sharp, "blur": blurred(sharp, 1.5), "blur_gamma": blurred(sharp, 2.5),
                        "restored": noisy(sharp, seed=i)}
        for key in ("sharp", "blur", "blur_gamma"): save_png(root / "test" / sequence / key / file, images[name][key])
    return root, images


def run(argv, capsys):
    "eval_cli in-process: (exit code, stdout, stderr)."
    code = eval_cli([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_csv(csv: Path, expected: dict[str, list[float]]) -> None:
    "The CSV has one row per name, in name order, with values equal to the references."
    table = pd.read_csv(csv)
    assert list(table.columns) == ["name", "psnr", "ssim2d", "ssim_matlab"]
    assert table.name.tolist() == sorted(expected)
    np.testing.assert_allclose(table[["psnr", "ssim2d", "ssim_matlab"]].to_numpy(),
                               np.array([expected[n] for n in table.name]), rtol=0, atol=1e-9)


def save_predictions(folder: Path, images: dict, rename=lambda name: name, names=NAMES) -> Path:
    "Write the 'restored' image of each name under folder/rename(name)."
    for name in names: save_png(folder / rename(name), images[name]["restored"])
    return folder


def test_blurred_inputs(gopro, tmp_path, capsys):
    root, images = gopro
    csv = tmp_path / "runs" / "blurred.csv"  # parent folder does not exist yet
    code, out, err = run(["--gopro", root, "--pred", "blur", "--csv", csv, "--quiet"], capsys)
    assert code == 0, err
    expected = {n: reference_metrics(images[n]["blur"], images[n]["sharp"]) for n in NAMES}
    check_csv(csv, expected)
    means = np.mean(list(expected.values()), axis=0)
    assert f"3 images | PSNR {means[0]:.2f} dB | ssim2d {means[1]:.4f} | ssim_matlab {means[2]:.4f}" in out
    assert "blurred input (blur)" in out and PROTOCOL in out
    assert [p.name for p in csv.parent.iterdir()] == ["blurred.csv"]  # no temporary file left


def test_blur_gamma_inputs(gopro, tmp_path, capsys):
    root, images = gopro
    csv = tmp_path / "gamma.csv"
    code, out, err = run(["--gopro", root, "--pred", "blur", "--blur-key", "blur_gamma", "--csv", csv, "--quiet"], capsys)
    assert code == 0, err
    check_csv(csv, {n: reference_metrics(images[n]["blur_gamma"], images[n]["sharp"]) for n in NAMES})


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_predictions_nested_or_flat(gopro, tmp_path, capsys, layout):
    root, images = gopro
    rename = (lambda n: n) if layout == "nested" else (lambda n: n.replace("/", "_"))
    pred = save_predictions(tmp_path / "pred", images, rename)
    csv = tmp_path / "restored.csv"
    code, out, err = run(["--gopro", root, "--pred", pred, "--csv", csv, "--quiet"], capsys)
    assert code == 0, err
    check_csv(csv, {n: reference_metrics(images[n]["restored"], images[n]["sharp"]) for n in NAMES})


def test_missing_prediction(gopro, tmp_path, capsys):
    root, images = gopro
    pred = save_predictions(tmp_path / "pred", images, names=NAMES[:2])
    csv = tmp_path / "old.csv"
    csv.write_text("previous results\n")
    code, out, err = run(["--gopro", root, "--pred", pred, "--csv", csv, "--quiet"], capsys)
    assert code == 1
    assert "no prediction for 1 of 3 ground-truth images: SEQ_B/000001.png" in err
    assert out == "" and csv.read_text() == "previous results\n"  # a failed run writes nothing


def test_extra_file(gopro, tmp_path, capsys):
    root, images = gopro
    pred = save_predictions(tmp_path / "pred", images)
    save_png(pred / "SEQ_C" / "000009.png", images[NAMES[0]]["restored"])
    code, out, err = run(["--gopro", root, "--pred", pred, "--quiet"], capsys)
    assert code == 1
    assert "extra files that match no ground-truth image (1): SEQ_C/000009.png" in err


def test_bare_names_are_ambiguous_in_gopro(gopro, tmp_path, capsys):
    "000001.png exists in two sequences, so a bare 000001.png cannot be matched; 000002.png is unique and can."
    root, images = gopro
    pred = save_predictions(tmp_path / "pred", images, lambda n: n.split("/")[1], names=NAMES[1:2])
    save_png(pred / "000001.png", images[NAMES[0]]["restored"])
    code, out, err = run(["--gopro", root, "--pred", pred, "--quiet"], capsys)
    assert code == 1
    assert "no prediction for 2 of 3 ground-truth images: SEQ_A/000001.png, SEQ_B/000001.png" in err
    assert "extra files that match no ground-truth image (1): 000001.png" in err
    assert "SEQ_A/000002.png" not in err.split("ground-truth images:")[1].split("\n")[0]  # the unique bare name matched


def test_two_candidates_for_one_name(gopro, tmp_path, capsys):
    root, images = gopro
    pred = save_predictions(tmp_path / "pred", images)
    save_png(pred / "SEQ_A_000002.jpg", images[NAMES[1]]["restored"])
    code, out, err = run(["--gopro", root, "--pred", pred, "--quiet"], capsys)
    assert code == 1
    assert "ambiguous matches (1): SEQ_A/000002.png -> SEQ_A/000002.png | SEQ_A_000002.jpg" in err


def test_size_mismatch(gopro, tmp_path, capsys):
    root, images = gopro
    pred = save_predictions(tmp_path / "pred", images)
    save_png(pred / NAMES[2], images[NAMES[2]]["restored"][:40, :60])
    code, out, err = run(["--gopro", root, "--pred", pred, "--quiet"], capsys)
    assert code == 1
    assert "SEQ_B/000001.png (prediction 60x40, ground truth 64x48)" in err


def test_truncated_prediction(gopro, tmp_path, capsys):
    root, images = gopro
    pred = save_predictions(tmp_path / "pred", images)
    broken = pred / NAMES[0]
    broken.write_bytes(broken.read_bytes()[:200])  # header intact, pixel data cut
    code, out, err = run(["--gopro", root, "--pred", pred, "--quiet"], capsys)
    assert code == 1
    assert "images that could not be evaluated (1 of 3)" in err and str(broken) in err


def test_plain_folders(gopro, tmp_path, capsys):
    root, images = gopro
    gt = tmp_path / "gt"
    for name in NAMES: save_png(gt / name, images[name]["sharp"])
    pred = save_predictions(tmp_path / "pred", images, lambda n: n.replace("/", "_"))
    csv = tmp_path / "folders.csv"
    code, out, err = run(["--pred", pred, "--gt", gt, "--csv", csv, "--quiet"], capsys)
    assert code == 0, err
    check_csv(csv, {n: reference_metrics(images[n]["restored"], images[n]["sharp"]) for n in NAMES})
    assert f"{pred} vs {gt}: 3 images" in out


def test_input_target_layout(tmp_path, capsys):
    "The MPRNet/Restormer layout test/{input,target}/NAME.png: names are flat file names."
    root, sharp = tmp_path / "flat", skimage.data.astronaut()[:40, :56]
    save_png(root / "test" / "target" / "scene-1.png", sharp)
    save_png(root / "test" / "input" / "scene-1.png", blurred(sharp, 2.0))
    csv = tmp_path / "flat.csv"
    code, out, err = run(["--gopro", root, "--pred", "blur", "--csv", csv, "--quiet"], capsys)
    assert code == 0, err
    check_csv(csv, {"scene-1.png": reference_metrics(blurred(sharp, 2.0), sharp)})


def test_usage_and_setup_errors(gopro, tmp_path, capsys):
    root, _ = gopro
    with pytest.raises(SystemExit) as exit_info:  # argparse: --pred blur has no meaning without --gopro
        eval_cli(["--gt", str(root), "--pred", "blur"])
    assert exit_info.value.code == 2
    assert "--pred blur needs --gopro" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        eval_cli(["--pred", "blur"])  # neither --gt nor --gopro
    assert exit_info.value.code == 2
    capsys.readouterr()
    code, out, err = run(["--gopro", tmp_path / "nowhere", "--pred", "blur"], capsys)
    assert code == 2 and "nowhere" in err
    code, out, err = run(["--gopro", root, "--pred", tmp_path / "no-such-pred"], capsys)
    assert code == 2 and "no-such-pred" in err
    code, out, err = run(["--gopro", root, "--pred", "blur", "--split", "train"], capsys)
    assert code == 2 and "train" in err


def test_progress_bar(gopro, capsys):
    root, _ = gopro
    code, out, err = run(["--gopro", root, "--pred", "blur"], capsys)
    assert code == 0 and "evaluating" in err and "3/3" in err


def cli_command() -> list[str]:
    "The installed console script, or the same entry point through python -c when the package is not installed."
    script = Path(sys.executable).parent / "dbgan-eval"
    if script.exists(): return [str(script)]
    return [sys.executable, "-c", "import sys; from dbgan_nb.metrics import eval_cli; sys.exit(eval_cli())"]


def test_console_script_exit_codes(gopro, tmp_path):
    root, images = gopro
    pred = save_predictions(tmp_path / "pred", images, names=NAMES[1:])
    failed = subprocess.run(cli_command() + ["--gopro", str(root), "--pred", str(pred), "--quiet"],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1, failed.stderr
    assert "SEQ_A/000001.png" in failed.stderr
    save_predictions(pred, images, names=NAMES[:1])
    ok = subprocess.run(cli_command() + ["--gopro", str(root), "--pred", str(pred), "--quiet"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "3 images | PSNR" in ok.stdout


@pytest.mark.parametrize("flag", ["--compiled", "--no-compiled"])
def test_compiled_flag_gives_the_reference_values(gopro, tmp_path, capsys, flag):
    "Both SSIM paths (torch.compile'd strips and eager strips) match scikit-image / scipy on the same tree."
    root, images = gopro
    pred = save_predictions(tmp_path / "restored", images)
    csv = tmp_path / "restored.csv"
    code, out, err = run(["--gopro", root, "--pred", pred, "--csv", csv, "--quiet", flag], capsys)
    assert code == 0, err
    if flag == "--compiled":  # the compiled path really ran: no recorded failure, and the shape is compiled
        assert not metrics._compile_failure and (1, 3, True) in metrics._compiled_shapes, metrics._compile_failure
    check_csv(csv, {n: reference_metrics(images[n]["restored"], images[n]["sharp"]) for n in NAMES})


def test_hide_both_layouts(tmp_path, capsys):
    "HIDE's own layout and the flat input/target one give the same GoPro-protocol numbers for the blurred inputs."
    photos = {"a.png": skimage.data.astronaut()[100:148, 180:244], "b.png": skimage.data.coffee()[120:168, 200:264]}
    native, flat = tmp_path / "HIDE", tmp_path / "HIDE_flat"
    for (name, sharp), part in zip(photos.items(), ("test-close-ups", "test-long-shot")):
        save_png(native / "test" / part / name, blurred(sharp, 1.5)); save_png(native / "GT" / name, sharp)
        save_png(flat / "input" / name, blurred(sharp, 1.5)); save_png(flat / "target" / name, sharp)
    expected = np.mean([reference_metrics(blurred(s, 1.5), s)[0] for s in photos.values()])
    for root in (native, flat):
        code, out, err = run(["--hide", root, "--pred", "blur", "--quiet"], capsys)
        assert code == 0, err
        assert f"2 images | PSNR {expected:.2f} dB" in out, out
    (native / "GT" / "b.png").unlink()  # a blurred frame without its sharp partner is named
    code, out, err = run(["--hide", native, "--pred", "blur", "--quiet"], capsys)
    assert code == 1 and "test-long-shot/b.png" in err, err
    code, out, err = run(["--hide", tmp_path / "missing", "--pred", "blur"], capsys)
    assert code == 2 and "missing" in err


def test_realblur_protocol_and_layout(tmp_path, capsys):
    "RealBlur's scene layout with its test list; scores are the RealBlur protocol's; a missing listed file is named."
    scene_root = "RealBlur-J_ECC_IMCORR_centroid_itensity_ref"
    root, lines, expected = tmp_path / "RealBlur", [], []
    for k, sharp in enumerate([skimage.data.astronaut()[100:196, 150:278], skimage.data.coffee()[100:196, 200:328]]):
        blur = blurred(sharp, 1.2)
        save_png(root / scene_root / f"scene00{k}" / "gt" / "gt_1.png", sharp)
        save_png(root / scene_root / f"scene00{k}" / "blur" / "blur_1.png", blur)
        lines.append(f"{scene_root}/scene00{k}/gt/gt_1.png {scene_root}/scene00{k}/blur/blur_1.png")
        expected.append(metrics.realblur_metrics(blur, sharp))
    (root / "RealBlur_J_test_list.txt").write_text("\n".join(lines) + "\n")
    csv = tmp_path / "rb.csv"
    code, out, err = run(["--realblur", root, "--subset", "J", "--pred", "blur", "--csv", csv, "--quiet"], capsys)
    assert code == 0, err
    table = pd.read_csv(csv)
    assert list(table.columns) == ["name", "psnr", "ssim"] and table.name.tolist() == ["scene000/blur_1.png", "scene001/blur_1.png"]
    np.testing.assert_allclose(table[["psnr", "ssim"]].to_numpy(), np.array(expected), atol=1e-9)
    assert "RealBlur protocol" in out and f"PSNR {np.mean([e[0] for e in expected]):.2f} dB" in out
    # predictions named by scene, flat
    preds = tmp_path / "pred"
    for k in range(2): save_png(preds / f"scene00{k}_blur_1.png", blurred(np.asarray(Image.open(root / scene_root / f"scene00{k}" / "gt" / "gt_1.png")), 1.2))
    assert run(["--realblur", root, "--subset", "J", "--pred", preds, "--quiet"], capsys)[0] == 0
    with open(root / "RealBlur_J_test_list.txt", "a") as f: f.write(f"{scene_root}/scene009/gt/gt_1.png {scene_root}/scene009/blur/blur_1.png\n")
    code, out, err = run(["--realblur", root, "--subset", "J", "--pred", "blur"], capsys)
    assert code == 1 and "scene009/gt/gt_1.png" in err, err
    with pytest.raises(SystemExit) as usage:
        eval_cli(["--realblur", str(root), "--pred", "blur"])  # --subset missing
    assert usage.value.code == 2
