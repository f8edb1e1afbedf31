"""The configs compose to what they name. (Every choice of every group takes a training step: test_every_config.)"""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from cnnlab.run import build
from conftest import compose_config


@pytest.mark.parametrize("choice", ["gpu", "ddp"])
def test_gpu_trainer_composes(tmp_path, choice):
    cfg = compose_config([f"trainer={choice}"], tmp_path)
    assert cfg.trainer.accelerator == "gpu"


def test_defaults_are_the_seeds_recipe(tmp_path):
    cfg = compose_config([], tmp_path)  # nothing overridden: what `python -m cnnlab.train` runs
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.9
    assert cfg.data.batch_size == 256 and cfg.data.name == "fashion_mnist"
    assert cfg.trainer.max_epochs == 10 and cfg.init == "xavier_uniform"
    assert cfg.hydra.runtime.choices.model == "lenet" and cfg.hydra.runtime.choices.data == "fashion_mnist"


def test_experiment_sets_the_improved_recipe(tiny_cfg):
    cfg = tiny_cfg("experiment=lenet_improved")
    assert cfg.optimizer.lr == 0.1 and cfg.trainer.max_epochs == 50 and cfg.model.conv_channels == [6, 10, 16]


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_schedulers_reach_the_optimizer(scheduler, tiny_cfg):
    cfg = tiny_cfg(f"scheduler={scheduler}", "optimizer=adamw")
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    assert type(trainer.lr_scheduler_configs[0].scheduler).__name__ in ("CosineAnnealingLR", "OneCycleLR")


def test_run_dir_is_under_the_log_root_and_named_for_model_and_data(tiny_cfg):
    cfg = tiny_cfg("model=lenet_maxpool", "data=mnist")
    assert cfg.run_name == "lenet_maxpool-mnist"
    assert cfg.hydra.run.dir.startswith(cfg.paths.log_dir + "/lenet_maxpool-mnist/")


def test_model_size_follows_the_data_config(tiny_cfg):
    cfg = tiny_cfg("data.num_classes=10", "data.image_size=32")
    assert instantiate(cfg.model).image_size == 32


def test_the_configs_name_the_metric_and_the_study_file_as_cnnlab_does(tmp_path):
    """The YAML files cannot import cnnlab.vocab: they name its words, and this test holds them to it."""
    from cnnlab.vocab import SweepFiles, Tag

    cfg = compose_config([], tmp_path)
    assert cfg.callbacks.model_checkpoint.monitor == Tag.VAL_ACC  # the best checkpoint follows the selection metric
    for search in ("optuna", "search"):
        storage = compose_config([f"sweep={search}"], tmp_path).hydra.sweeper.storage
        assert storage.endswith(f"/{SweepFiles.STUDY}"), storage
