"""Ray Tune over fine-tuning: how many final backbone blocks train, the backbone's learning rate relative
to the heads', and the augmentation strength. ASHA stops weak trials; every trial checkpoints each epoch
and logs its own nested MLflow run (with system metrics) while it runs.

A trial asking for more than one GPU runs data parallel through Ray Train's ``TorchTrainer``
(``run_data_parallel``), reporting to Tune through ``TuneReportCallback``; the loop is the same
``training.finetune.fine_tune`` either way.

Resume: the experiment folder is keyed by what the search depends on (``search_key``). A killed run
started again restores it (``Tuner.restore``): finished trials are not repeated, unfinished and errored
ones continue from their last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from training.decoded import CachePolicy
from training.finetune import KEEP_DECODED, FinetuneParams, Images, State, fine_tune, finetuned_config
from training.model import LightboxModel
from training.tune import interruptible

METRIC, MODE = "val_loss", "min"
CHECKPOINT_FILE = "finetune.pt"


@dataclass(frozen=True)
class FinetuneTrial:
    name: str
    params: FinetuneParams
    history: pd.DataFrame  # one row per epoch reported to Tune
    best: float  # lowest validation loss
    best_epoch: int
    checkpoint: Path | None  # the best epoch's checkpoint folder


def search_space(epochs: int, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the trials vary, less what ``fixed`` pins (a test pins one block; a team may pin any)."""
    from ray import tune

    space = {
        # 1 block: ~0.3M of the backbone's 3.4M weights; 4 reach block 12 (the quality blocks stay frozen
        # below 8: QUALITY_BLOCKS = 1, 5, 8 in training.model).
        "unfreeze_blocks": tune.choice([1, 2, 4]),
        "backbone_lr_ratio": tune.loguniform(0.03, 1.0),
        "aug_strength": tune.uniform(0.0, 1.0),
        "epochs": epochs,
    }
    return {k: v for k, v in space.items() if k not in (fixed or {})}


def search_key(parts: Mapping[str, Any]) -> str:
    """A short stable hash of what a search depends on (data version, starting config, settings): the
    same DAG run started again finds its own experiment folder; a different one never does."""
    text = json.dumps({k: str(v) for k, v in sorted(parts.items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def save_state(folder: Path, state: State, **extra: Any) -> None:
    torch.save(state.to_dict() | extra, folder / CHECKPOINT_FILE)


def load_state(folder: Path) -> tuple[State, dict[str, Any]]:
    raw = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    return State.from_dict(raw), {k: v for k, v in raw.items() if k not in State.__dataclass_fields__}


def model_from_checkpoint(start: LightboxModel, params: FinetuneParams, folder: Path) -> LightboxModel:
    """The fine-tuned model a checkpoint holds: ``start``'s architecture, the fine-tuned config."""
    model = LightboxModel(
        finetuned_config(start.config, params), copy.deepcopy(start.heads), copy.deepcopy(start.extractor)
    )
    state, _ = load_state(folder)
    model.load_state_dict(state.model)
    return model.eval()


def params_from(config: Mapping[str, Any], fixed: Mapping[str, Any]) -> FinetuneParams:
    names = {f.name for f in dataclasses.fields(FinetuneParams)}
    return FinetuneParams(**{k: v for k, v in (dict(config) | dict(fixed)).items() if k in names})


def _trial(
    config: dict,
    start: LightboxModel,
    train: Images,
    val: Images,
    fixed: dict,
    mlflow_ctx: dict | None,
    workers: int,
    world: int,
    cache: CachePolicy,
) -> None:
    """One Tune trial: resume from Tune's checkpoint if there is one, fine-tune, report each epoch."""
    from ray import tune

    params = params_from(config, fixed)
    ctx = tune.get_context()
    name = ctx.get_trial_name()
    resume: State | None = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume, _ = load_state(Path(d))
    run_id = None
    if mlflow_ctx is not None:
        import mlflow
        from lightbox.adapters import mlflow_runs

        tags = dict(mlflow_ctx["tags"]) | {"lightbox.stage": "finetune-trial", "ray.trial": name}
        if resume is not None:
            tags["lightbox.resumed_after_epoch"] = str(resume.epoch)
        run_id = mlflow_runs.start_trial_run(mlflow_ctx["settings"], mlflow_ctx["parent_run_id"], name, tags)
        model_config = finetuned_config(start.config, params)
        mlflow.log_params(model_config.to_params())

    if world > 1:
        _, rows = run_data_parallel(
            start,
            params,
            train,
            val,
            world=world,
            workers=workers,
            storage=Path(ctx.get_trial_dir()),
            use_gpu=torch.cuda.is_available(),
            report_to_tune=True,
            cache=cache,
        )
        if run_id is not None:  # the workers report to Tune; the trial's run gets the rows at the end
            import mlflow

            for row in rows:
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.set_num_threads(
            1 if device == "cuda" else max(1, int(ctx.get_trial_resources().required_resources.get("CPU", 1)))
        )

        def report(epoch: int, metrics: dict[str, float], state: State) -> None:
            if run_id is not None:
                import mlflow

                mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
                if epoch == params.epochs:
                    # Tune stops a trial at its last report (max_t): nothing after it runs.
                    mlflow.end_run()
            # resumed_after: 0 for a trial that started fresh, else the checkpoint's epoch it went on from.
            shown = metrics | {"resumed_after": float(resume.epoch if resume is not None else 0)}
            with tempfile.TemporaryDirectory() as tmp:
                save_state(Path(tmp), state)
                tune.report(shown, checkpoint=tune.Checkpoint.from_directory(tmp))

        model = LightboxModel(
            finetuned_config(start.config, params), copy.deepcopy(start.heads), copy.deepcopy(start.extractor)
        )
        fine_tune(
            model,
            params,
            train,
            val,
            device=device,
            report=report,
            resume=resume,
            workers=workers,
            cache=cache,
        )
    if run_id is not None and world > 1:
        import mlflow

        mlflow.end_run()


def run_search(
    start: LightboxModel,
    train: Images,
    val: Images,
    *,
    trials: int,
    epochs: int,
    storage: Path,
    key: str,
    fixed: Mapping[str, Any],
    gpus_per_trial: float = 0.0,
    cpus_per_trial: int = 1,
    workers: int = 0,
    seed: int = 0,
    mlflow_ctx: dict | None = None,
    cache: CachePolicy = KEEP_DECODED,
) -> list[FinetuneTrial]:
    """Every trial, best first. ``fixed`` holds the FinetuneParams fields the search does not vary
    (aug_ops, batch_size, head_lr, seed). ``gpus_per_trial`` above 1 (a whole number) runs each trial data
    parallel over that many GPUs; a fraction shares one GPU among trials."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    world = int(gpus_per_trial) if gpus_per_trial > 1 else 1
    if world > 1 and world != gpus_per_trial:
        raise ValueError(f"more than one GPU per trial must be a whole number, got {gpus_per_trial}")
    # A data-parallel trial only drives its TorchTrainer: the workers hold the GPUs.
    resources: dict[str, float] = (
        {"cpu": 1, "gpu": 0} if world > 1 else {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            start=start,
            train=train,
            val=val,
            fixed=dict(fixed),
            mlflow_ctx=mlflow_ctx,
            workers=workers,
            world=world,
            cache=cache,
        ),
        resources,
    )
    path = storage.resolve() / f"finetune-{key}"
    if tune.Tuner.can_restore(str(path)):
        # The same search was killed: finished trials stay finished, the rest continue from checkpoints.
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(epochs, fixed),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode=MODE,
                num_samples=trials,
                scheduler=ASHAScheduler(max_t=epochs, grace_period=1, reduction_factor=2),
                search_alg=BasicVariantGenerator(random_state=seed),
            ),
            run_config=tune.RunConfig(
                storage_path=str(storage.resolve()),
                name=path.name,
                verbose=1,
                # The best epoch's checkpoint is what the model is built from; the latest is kept
                # besides (Tune always keeps it) so a killed trial resumes.
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=1, checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE
                ),
            ),
        )
    with interruptible():
        grid = tuner.fit()
    out = []
    for i in range(len(grid)):
        r = grid[i]
        if r.error:
            raise RuntimeError(f"fine-tune trial failed: {r.error}")
        history = r.metrics_dataframe if r.metrics_dataframe is not None else pd.DataFrame()
        scored = len(history) and METRIC in history and history[METRIC].notna().any()
        best = history.loc[history[METRIC].idxmin()] if scored else None
        ckpt = r.get_best_checkpoint(METRIC, MODE) if scored else None
        if ckpt is None and best is not None and "checkpoint_path" in history:
            ckpt = tune.Checkpoint(str(best["checkpoint_path"]))  # a data-parallel trial's (Ray Train's)
        out.append(
            FinetuneTrial(
                name=str(getattr(r, "path", "") or "").rsplit("/", 1)[-1],
                params=params_from(r.config or {}, fixed),
                history=history,
                best=float(best[METRIC]) if best is not None else float("inf"),
                best_epoch=int(best["epoch"]) if best is not None else 0,
                checkpoint=Path(ckpt.path) if ckpt is not None else None,
            )
        )
    return sorted(out, key=lambda t: t.best)


# --- data parallel: one trial over several GPUs (or, in the tests, two CPU workers on gloo) -------------


def _worker(cfg: dict) -> None:
    """One Ray Train worker: the same loop, its share of each global batch, gradients synced by DDP.
    Rank 0 validates, writes the resume file (every worker restarts from it) and reports the checkpoint."""
    import ray.train
    import ray.train.torch
    from torch.nn.parallel import DistributedDataParallel

    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(1)
    params: FinetuneParams = cfg["params"]
    start: LightboxModel = cfg["start"]
    model = LightboxModel(
        finetuned_config(start.config, params), copy.deepcopy(start.heads), copy.deepcopy(start.extractor)
    )
    resume_file = Path(cfg["resume_dir"]) / CHECKPOINT_FILE
    resume = load_state(resume_file.parent)[0] if resume_file.exists() else None

    def wrap(net: torch.nn.Module) -> torch.nn.Module:
        return DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)

    def report(epoch: int, metrics: dict[str, float], state: State) -> None:
        if rank != 0:
            ray.train.report(metrics)
            return
        tmp_resume = resume_file.with_suffix(".tmp")
        torch.save(state.to_dict(), tmp_resume)
        tmp_resume.replace(resume_file)  # atomic: a kill never leaves half a checkpoint to resume from
        with tempfile.TemporaryDirectory() as tmp:
            save_state(Path(tmp), state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    fine_tune(
        model,
        params,
        cfg["train"],
        cfg["val"],
        device=device,
        report=report,
        resume=resume,
        workers=cfg["workers"],
        rank=rank,
        world=world,
        wrap=wrap,
        cache=cfg["cache"],
    )


def run_data_parallel(
    start: LightboxModel,
    params: FinetuneParams,
    train: Images,
    val: Images | None,
    *,
    world: int,
    storage: Path,
    use_gpu: bool,
    workers: int = 0,
    report_to_tune: bool = False,
    cache: CachePolicy = KEEP_DECODED,
) -> tuple[LightboxModel, list[dict[str, float]]]:
    """Fine-tune over ``world`` data-parallel workers (one GPU each, else CPU on gloo); returns the final
    model and its epoch rows (rank 0's). Inside a Tune trial, ``report_to_tune`` forwards each epoch."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    storage.mkdir(parents=True, exist_ok=True)
    callbacks: list[Any] = []  # Train V2 callbacks (the default in Ray 2.60); the stubs name V1's type
    if report_to_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "params": params,
            "start": start,
            "train": train,
            "val": val,
            "workers": workers,
            "resume_dir": str(storage),
            "cache": cache,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=world, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(
            storage_path=str(storage),
            name="ddp",
            callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"data-parallel fine-tuning reported no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        model = model_from_checkpoint(start, params, Path(d))
        state, _ = load_state(Path(d))
    return model, state.history
