"""Checkpoints in use: ``python -m cnnlab.eval`` tests one, ``python -m cnnlab.predict`` classifies image files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from cnnlab.config import CONF_DIR
from cnnlab.errors import ConfigError
from cnnlab.eval import CheckpointError, data_config, load_classifier, read_checkpoint
from cnnlab.predict import ImageFileError, image_files, predict, to_model_input
from cnnlab.rundir import add_eval
from cnnlab.train import train
from conftest import TINY_OVERRIDES, compose_config, run_cli, write_idx_set

FASHION_CLASSES = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run (trainer=debug): its run dir, holding checkpoints/last.ckpt."""
    folder = tmp_path_factory.mktemp("trained")
    data_dir = folder / "data"
    write_idx_set(data_dir / "FashionMNIST" / "raw")
    train(compose_config([*TINY_OVERRIDES, f"paths.data_dir={data_dir}"], folder))
    GlobalHydra.instance().clear()
    return folder / "run"


def compose_entry(config_name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=overrides)


# --- eval ---------------------------------------------------------------------------------------------------


def test_cli_eval_restores_the_data_and_adds_to_metrics_json(trained, tmp_path):
    before = json.loads((trained / "metrics.json").read_text())
    ckpt = trained / "checkpoints" / "last.ckpt"
    # the same trainer limits as training's test: the same weights must give the same accuracy
    result = run_cli("cnnlab.eval", f"ckpt_path={ckpt}", "trainer=debug", "trainer.accelerator=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoints/last.ckpt: test_acc" in result.stdout
    after = json.loads((trained / "metrics.json").read_text())
    evaluated = after.pop("eval")["checkpoints/last.ckpt"]
    assert after == before  # the training keys are kept
    assert evaluated["test_acc"] == pytest.approx(before["test_acc"])
    saved = torch.load(ckpt, weights_only=True)
    assert (evaluated["epoch"], evaluated["global_step"]) == (saved["epoch"], saved["global_step"])
    assert evaluated["data"] == "fashion_mnist" and evaluated["test_loss"] > 0
    assert list(tmp_path.iterdir()) == []  # no run dir or log file where it was started


def test_eval_data_config_comes_from_the_checkpoint_unless_overridden(trained):
    checkpoint = read_checkpoint(trained / "checkpoints" / "last.ckpt")
    saved = checkpoint["datamodule_hyper_parameters"]
    overrides = ["data.data_dir=/elsewhere", "data.eval_batch_size=7"]
    restored = data_config(compose_entry("eval", overrides), checkpoint, overrides)
    assert restored["data_dir"] == "/elsewhere" and restored["eval_batch_size"] == 7
    assert restored["batch_size"] == saved["batch_size"] == 16 and restored["val_size"] == 20  # the training run's
    assert restored["_target_"] == "cnnlab.data.MNISTDataModule"
    assert data_config(compose_entry("eval", []), checkpoint, [])["data_dir"] == saved["data_dir"]
    via_paths = data_config(compose_entry("eval", ["paths.data_dir=/p"]), checkpoint, ["paths.data_dir=/p"])
    assert via_paths["data_dir"] == "/p"
    other_set = data_config(compose_entry("eval", ["data=mnist"]), checkpoint, ["data=mnist"])
    assert other_set["name"] == "mnist" and other_set["batch_size"] == 256
    GlobalHydra.instance().clear()


def test_add_eval_keeps_training_keys_and_fills_a_missing_test_acc(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"test_acc": 0.8, "params": 5}))
    add_eval(tmp_path, "checkpoints/best.ckpt", {"test_acc": 0.9})
    add_eval(tmp_path, "checkpoints/last.ckpt", {"test_acc": 0.7})
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {k: v for k, v in metrics.items() if v is not None and v != []} == {
        "test_acc": 0.8,
        "params": 5,
        "status": "ok",
        "eval": {"checkpoints/best.ckpt": {"test_acc": 0.9}, "checkpoints/last.ckpt": {"test_acc": 0.7}},
    }
    fresh = tmp_path / "interrupted"  # a run killed before its record: evaluating it does not make it finished
    fresh.mkdir()
    add_eval(fresh, "checkpoints/last.ckpt", {"test_acc": 0.6})
    record = json.loads((fresh / "metrics.json").read_text())
    assert record["test_acc"] == 0.6 and record["status"] == "interrupted"


def test_an_eval_beside_a_running_job_waits_for_the_record_and_is_kept(tmp_path):
    """A run writes its record while ``cnnlab.eval`` adds to it: one writer at a time, and neither loses the other's
    entry (the run's final write keeps an eval made while it trained)."""
    import threading

    from cnnlab.rundir import RunRecord, record_lock, write_record

    add_eval(tmp_path, "checkpoints/best-epoch00.ckpt", {"test_acc": 0.5})  # evaluated mid-training
    write_record(tmp_path, RunRecord(test_acc=0.8, params=5))  # the run ends
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["test_acc"] == 0.8 and record["eval"] == {"checkpoints/best-epoch00.ckpt": {"test_acc": 0.5}}

    done = threading.Event()
    with record_lock(tmp_path):  # the run is writing its record
        thread = threading.Thread(target=lambda: (add_eval(tmp_path, "checkpoints/last.ckpt", {"test_acc": 0.7}),
                                                  done.set()))  # fmt: skip
        thread.start()
        assert not done.wait(0.5)  # the eval waits
    thread.join(10)
    assert done.is_set() and set(json.loads((tmp_path / "metrics.json").read_text())["eval"]) == {
        "checkpoints/best-epoch00.ckpt", "checkpoints/last.ckpt"}  # fmt: skip


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a checkpoint at all", "PyTorch cannot load it as plain data"),
        ({"state_dict": {}, "hyper_parameters": {"lr": 0.1}}, "no state_dict and hyper_parameters.model"),
        (
            {"state_dict": {}, "hyper_parameters": {"model": {"_target_": "os.system"}, "optimizer": {}}},
            "not a network",
        ),
        ({"weights": np.zeros(3)}, "PyTorch cannot load it as plain data"),  # pickled objects: not loaded
    ],
)
def test_not_a_cnnlab_checkpoint_is_refused(tmp_path, content, match):
    path = tmp_path / "other.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="is not a file"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_weights_that_do_not_fit_their_model_are_refused(trained, tmp_path):
    checkpoint = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["model"]["fc_sizes"] = [99, 84]
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointError, match=r"its network cannot be rebuilt from it \(Error\(s\) in loading"):
        load_classifier(tmp_path / "edited.ckpt")


def test_cli_eval_of_a_non_checkpoint_is_one_line(tmp_path):
    (tmp_path / "notes.ckpt").write_text("hello")
    result = run_cli("cnnlab.eval", f"ckpt_path={tmp_path / 'notes.ckpt'}", cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cnnlab: error: ckpt_path={tmp_path / 'notes.ckpt'} is not a cnnlab checkpoint: ")


# --- predict ------------------------------------------------------------------------------------------------


def test_predict_matches_the_model_on_a_test_image(trained, tmp_path):
    module, checkpoint = load_classifier(trained / "checkpoints" / "last.ckpt")
    raw = Path(checkpoint["datamodule_hyper_parameters"]["data_dir"]) / "FashionMNIST" / "raw"
    pixels = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16 : 16 + 784], np.uint8).reshape(28, 28)
    Image.fromarray(pixels).save(tmp_path / "first.png")
    cfg = OmegaConf.create(
        {"ckpt_path": str(trained / "checkpoints" / "last.ckpt"), "images": str(tmp_path), "top_k": 10, "invert": False}
    )
    [(path, top)] = predict(cfg)
    with torch.no_grad():
        expected = module(torch.from_numpy(pixels.copy()).float().div(255)[None, None]).softmax(dim=-1)[0]
    assert path.name == "first.png" and len(top) == 10
    names = [name for name, _ in top]
    assert set(names) == FASHION_CLASSES | {"Ankle boot"}
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    for name, p in top:
        assert p == pytest.approx(float(expected[classes.index(name)]), abs=1e-5)
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)


def test_any_image_becomes_a_light_on_dark_model_input(tmp_path):
    photo = np.full((90, 60, 3), 255, np.uint8)  # a dark square on white, in colour, not square
    photo[30:60, 15:45] = (10, 40, 20)
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    x = to_model_input(tmp_path / "photo.jpg", channels=1, size=28)
    assert x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert x[0, 0, 0] < 0.1 and x[0, 14, 14] > 0.8  # inverted: white background -> black, object -> light
    kept = to_model_input(tmp_path / "photo.jpg", channels=3, size=32, invert=False)
    assert kept.shape == (3, 32, 32) and kept[:, 0, 0].min() > 0.9
    with pytest.raises(ImageFileError, match="missing.png: no such file"):
        to_model_input(tmp_path / "missing.png", channels=1, size=28)


def test_cli_predict_prints_top_classes_and_one_line_per_bad_file(trained, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(images / "a.png")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(images / "b.bmp")
    (images / "c.png").write_text("this is text, not a picture")
    result = run_cli(
        "cnnlab.predict",
        f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
        f"images={images}/*",
        "top_k=2",
        cwd=tmp_path,
    )
    assert result.returncode == 2  # one file was bad; the others were still classified
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(images / "a.png"), str(images / "b.bmp")]
    for line in lines:
        top = line.split(": ", 1)[1].split(", ")
        assert len(top) == 2 and all(entry.rsplit(" ", 1)[0] in FASHION_CLASSES | {"Ankle boot"} for entry in top)
        assert all(entry.endswith("%") for entry in top)
    assert result.stderr.strip().splitlines() == [
        f"cnnlab: error: {images / 'c.png'}: not an image file; give PNG, JPEG, GIF, BMP, TIFF or WebP files."
    ]


def test_cli_predict_refuses_a_non_checkpoint_in_one_line(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(b"\x00" * 64)
    result = run_cli("cnnlab.predict", f"ckpt_path={tmp_path / 'x.ckpt'}", "images=a.png", cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cnnlab: error: ckpt_path={tmp_path / 'x.ckpt'} is not a cnnlab checkpoint: ")


def test_images_setting_takes_files_folders_globs_and_lists(tmp_path):
    for name in ("b.png", "a.jpg", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    assert image_files(str(tmp_path)) == [tmp_path / "a.jpg", tmp_path / "b.png"]
    assert image_files(f"{tmp_path}/*.png") == [tmp_path / "b.png"]
    assert image_files([str(tmp_path / "a.jpg"), "missing.png"]) == [tmp_path / "a.jpg", Path("missing.png")]
    with pytest.raises(ConfigError, match=r"images=.*/\*\.gif matches no file"):
        image_files(f"{tmp_path}/*.gif")
    with pytest.raises(ConfigError, match="images is not set"):
        image_files(None)


@pytest.mark.parametrize("module", ["cnnlab.eval", "cnnlab.predict"])
def test_a_boolean_setting_takes_only_a_boolean_in_eval_and_predict(module, tmp_path):
    """``tta=off`` switched test-time augmentation on in cnnlab.eval (bool('off')); it is refused, as by
    cnnlab.train. null keeps the training run's setting."""
    for value, refused in (("off", "tta='off' must be true or false."), ("yes", "tta='yes' must be true or false."),
                           ("null", None)):  # fmt: skip
        images = ["images=x.png"] if module == "cnnlab.predict" else []
        result = run_cli(module, f"ckpt_path={tmp_path}/none.ckpt", f"tta={value}", *images, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        (line,) = [line for line in result.stderr.splitlines() if line.startswith("cnnlab: error:")]
        if refused:
            assert line == f"cnnlab: error: {refused}", line
        else:
            assert "tta" not in line and "none.ckpt" in line, line  # past the settings: the missing checkpoint
    train = run_cli("cnnlab.train", "tta=off", cwd=tmp_path)
    assert train.stderr.strip() == "cnnlab: error: tta='off' must be true or false."
