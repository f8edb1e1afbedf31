"""TensorBoard's HPARAMS tab: a run's knobs (not its whole config), its final metrics, a sweep's experiment summary
that lists what the sweep varies first, and job dirs named by what differs (old sweep dirs still found)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import metadata

from cnnlab.hparams import EVENTS, SweepSummary, final_metrics, metric_values, run_hparams, status_codes
from cnnlab.rundir import RunRecord
from cnnlab.runtime import job_dirname, job_subdir
from cnnlab.train import train
from cnnlab.vocab import Status
from conftest import TINY_OVERRIDES, run_cli

DEFAULT_KNOBS = {
    "model", *(f"model.{k}" for k in ("conv_channels", "kernel_sizes", "paddings", "strides", "activation", "pool",
                                      "pool_size", "pool_stride", "fc_sizes", "batch_norm", "dropout")),
    *(f"data.{k}" for k in ("name", "batch_size", "val_size", "split_seed", "normalize", "augment", "crop_padding",
                            "erase_size", "erase_prob")),
    "optimizer", *(f"optimizer.{k}" for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov")),
    "scheduler", "scheduler.warmup_epochs", "trainer.max_epochs", "trainer.precision",
    "seed", "init", "label_smoothing", "tta", "tags",
}  # fmt: skip


def plugin_data(folder: Path) -> dict[str, bytes]:
    """The hparams plugin's summaries in ``folder``'s event files, by tag (the experiment, a session's start)."""
    found = {}
    for events in folder.glob(EVENTS):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME:
                    found[value.tag] = value.metadata.plugin_data.content
    return found


def test_a_default_run_logs_its_knobs_not_its_whole_config(tiny_cfg):
    cfg = tiny_cfg()
    params = run_hparams(cfg)
    assert set(params) == DEFAULT_KNOBS  # no callback, logger, path or Trainer plumbing
    assert not [k for k in params if "_target_" in k or k.startswith(("callbacks", "logger", "paths", "hydra"))]
    assert params["model"] == "lenet" and params["optimizer"] == "sgd" and params["optimizer.lr"] == 0.9
    assert params["model.conv_channels"] == "[6,16]" and params["data.augment"] == "[]"
    with_ema = run_hparams(tiny_cfg("ema=0.99", "data.augment=[crop,flip]"))
    assert with_ema["ema"] == 0.99 and with_ema["data.augment"] == "[crop,flip]"  # unset (ema=null) is left out


def test_a_run_leaves_its_knobs_metrics_and_config_in_tensorboard(tiny_cfg, tmp_path, one_torch_thread):
    metrics = train(tiny_cfg("trainer.max_epochs=1", "optimizer.lr=0.5"))
    run_dir = tmp_path / "run"
    found = plugin_data(run_dir)
    start = metadata.parse_session_start_info_plugin_data(found[metadata.SESSION_START_INFO_TAG])
    assert set(start.hparams) == DEFAULT_KNOBS and start.hparams["optimizer.lr"].number_value == 0.5
    experiment = metadata.parse_experiment_plugin_data(found[metadata.EXPERIMENT_TAG])  # a single run: its own
    assert {i.name for i in experiment.hparam_infos} == DEFAULT_KNOBS
    scalars = EventAccumulator(str(run_dir)).Reload()
    final = {tag: scalars.Scalars(tag)[-1].value for tag in scalars.Tags()["scalars"] if tag.startswith("hp/")}
    assert final["hp/status"] == status_codes()[Status.OK] and final["hp/params"] == metrics["params"]
    assert final["hp/macs"] > final["hp/params"] and final["hp/test_acc"] == pytest.approx(metrics["test_acc"])
    texts = [v for p in run_dir.glob(EVENTS) for e in EventFileLoader(str(p)).Load() for v in e.summary.value
             if v.tag == "config"]  # fmt: skip
    text = texts[0].tensor.string_val[0].decode()
    assert "python -m cnnlab.train" in text and "optimizer.lr=0.5" in text and "activation: sigmoid" in text


def test_the_final_metrics_hold_the_costs_and_the_status_as_a_number():
    codes = status_codes()
    written = [Status.OK, Status.FAILED, Status.INTERRUPTED, Status.PRUNED]  # what a run's record can say
    assert codes == {Status.OK: 0, Status.FAILED: 1, Status.INTERRUPTED: 2, Status.PRUNED: 3}  # fixed: never renumbered
    assert sorted(codes) == sorted(written)
    assert all(f"{code} {status}" in final_metrics()["status"] for status, code in codes.items())
    record = RunRecord(test_acc=0.8, val_acc=0.81, params=61706, wall_s=12.0, epochs=2, status=Status.FAILED)
    values = metric_values(record, macs=416520)
    assert values["hp/status"] == codes[Status.FAILED] and values["hp/macs"] == 416520.0
    assert "hp/examples_per_sec" not in values  # not measured: not logged


def sweep_config(sweep_dir: Path, params: dict, task: list[str], **sweeper) -> OmegaConf:
    """What a sweep's callbacks get: the sweep's overrides and params, its dir, its config groups' choices."""
    choices = {"model": "lenet", "data": "fashion_mnist", "optimizer": "sgd", "scheduler": "none"}
    hydra = {"sweeper": {"params": params, **sweeper}, "overrides": {"task": task}, "sweep": {"dir": str(sweep_dir)},
             "runtime": {"choices": choices}}  # fmt: skip
    return OmegaConf.create({"hydra": hydra, "seed": 42, "optimizer": {"lr": 0.9}})


def experiment_of(sweep_dir: Path):
    return metadata.parse_experiment_plugin_data(plugin_data(sweep_dir)[metadata.EXPERIMENT_TAG])


def test_a_sweeps_experiment_summary_lists_its_swept_keys_first_with_their_values(tmp_path):
    grid = tmp_path / "grid"
    SweepSummary().on_multirun_start(sweep_config(grid, {}, ["model=lenet,lenet_relu", "optimizer.lr=0.1,0.9",
                                                              "trainer.max_epochs=1"]))  # fmt: skip
    infos = experiment_of(grid).hparam_infos
    assert [i.name for i in infos[:2]] == ["model", "optimizer.lr"] and [i.differs for i in infos[:3]] == [1, 1, 0]
    assert [v.string_value for v in infos[0].domain_discrete.values] == ["lenet", "lenet_relu"]
    assert [v.number_value for v in infos[1].domain_discrete.values] == [0.1, 0.9]
    assert {"seed", "optimizer", "scheduler"} <= {i.name for i in infos[2:]}
    assert {m.name.tag for m in experiment_of(grid).metric_infos} == {f"hp/{k}" for k in final_metrics()}
    SweepSummary().on_multirun_start(sweep_config(grid, {}, ["model=lenet,lenet_relu", "optimizer.lr=0.1,0.9"]))
    assert len(list(grid.glob(EVENTS))) == 1  # a resumed sweep has its summary: not written twice

    search = tmp_path / "search"
    params = {"optimizer.lr": "tag(log, interval(0.001, 1.0))", "model.pool": "choice(avg, max)"}
    SweepSummary().on_multirun_start(sweep_config(search, params, ["sweep=optuna"], n_trials=5))
    infos = {i.name: i for i in experiment_of(search).hparam_infos}
    assert list(infos)[:2] == ["optimizer.lr", "model.pool"] and infos["model.pool"].differs  # the search space
    assert [v.string_value for v in infos["model.pool"].domain_discrete.values] == ["avg", "max"]
    interval = infos["optimizer.lr"].domain_interval
    assert (interval.min_value, interval.max_value) == (0.001, 1.0)


def test_a_job_dir_says_what_the_sweep_varies(tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    task = ["++trainer.limit_test_batches=2", "model=lenet,lenet_relu", "seed=1,2", "trainer.max_epochs=1"]
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {}, "overrides": {"task": task}}}))
    job = "++trainer.limit_test_batches=2,model=lenet_relu,seed=2,trainer.max_epochs=1"  # the job's override_dirname
    assert job_subdir(3, job, str(sweep_dir)) == "3_model=lenet_relu,seed=2"
    old = f"3_{job_dirname(job)}"  # a sweep started before: its job dirs are named by all the overrides
    (sweep_dir / old).mkdir()
    assert job_subdir(3, job, str(sweep_dir)) == old
    assert job_subdir(3, job, str(tmp_path / "no-record")) == old  # no record to tell what is swept: all of them


def test_an_old_sweep_dir_resumes_its_jobs_where_they_are(tmp_path, tiny_data_dir):
    sweep_dir = tmp_path / "sweep"
    command = ["-m", "optimizer.lr=0.1,0.9", *TINY_OVERRIDES, f"paths.data_dir={tiny_data_dir}",
               f"paths.log_dir={tmp_path / 'logs'}", f"hydra.sweep.dir={sweep_dir}", "callbacks=none"]  # fmt: skip
    first = run_cli("cnnlab.train", *command, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    new_names = sorted(p.parent.name for p in sweep_dir.glob("*/metrics.json"))
    assert new_names == ["0_optimizer.lr=0.1", "1_optimizer.lr=0.9"]
    for name in new_names:  # as a sweep started before this naming left them: <num>_<all overrides>
        job = sweep_dir / name
        hydra = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]
        job.rename(sweep_dir / f"{name.split('_')[0]}_{job_dirname(hydra['job']['override_dirname'])}")
    old_names = sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    assert all("batch_size=16" in name for name in old_names), old_names
    (sweep_dir / old_names[1] / "metrics.json").unlink()  # job 1 never finished

    again = run_cli("cnnlab.resume", str(sweep_dir), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()) == old_names  # no new job dirs
    assert f"job {old_names[0]} finished before" in again.stdout + again.stderr
    assert (sweep_dir / old_names[1] / "metrics.json").is_file()  # job 1 ran in its old dir
