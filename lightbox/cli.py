"""The `lightbox` command: one sub-command per lifecycle stage, each a thin call into pipelines/."""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from typing import Annotated

import typer

from lightbox.settings import load_settings

app = typer.Typer(
    help="lightbox: image scoring and tagging models, from labeled data to an endpoint.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Labeled image data: build, validate, version.", no_args_is_help=True)
dags_app = typer.Typer(help="Run the Airflow DAGs on the embedded home.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(dags_app, name="dags")


def _print(result: object) -> None:
    if is_dataclass(result):
        result = asdict(result)  # type: ignore[arg-type]
    typer.echo(json.dumps(result, indent=2, default=str))


@data_app.command("build")
def data_build(
    sources: Annotated[int | None, typer.Option(help="number of source images")] = None,
    variants: Annotated[int | None, typer.Option(help="distorted variants per source")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Render the deterministic labeled dataset into data/."""
    from pipelines import data

    _print(data.run(load_settings(), n_sources=sources, variants=variants, seed=seed))


@data_app.command("validate")
def data_validate() -> None:
    """Great-expectations suite + image integrity; quarantines corrupt files."""
    from pipelines import validate_data

    try:
        _print(validate_data.run(load_settings()))
    except validate_data.DataValidationError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None


@data_app.command("version")
def data_version() -> None:
    """dvc add + push data/, commit data.dvc; prints the dataset version."""
    from pipelines import version_data

    _print(version_data.run(load_settings()))


@data_app.command("show")
def data_show(rev: Annotated[str, typer.Option(help="git revision of data.dvc")] = "HEAD") -> None:
    """Print the manifest summary of the dataset as it was at a git revision (read through DVC)."""
    import io

    import pandas as pd

    from lightbox.adapters import dvc_repo

    df = pd.read_csv(io.BytesIO(dvc_repo.read_file_at(load_settings(), "manifest.csv", rev)))
    typer.echo(f"{len(df)} images at {rev}; splits: {df['split'].value_counts().to_dict()}")


@app.command()
def features() -> None:
    """Compute image features and materialize them in Feast."""
    from pipelines import features as stage

    _print(stage.run(load_settings()))


@app.command()
def train(
    trials: Annotated[int | None, typer.Option(help="Ray Tune trials")] = None,
    epochs: Annotated[int | None, typer.Option(help="max epochs per trial")] = None,
) -> None:
    """Tune, fit, log and register the model."""
    from pipelines import train as stage

    _print(stage.run(load_settings(), trials=trials, epochs=epochs))


Model = Annotated[str | None, typer.Option("--model", help="registered model name (default: settings)")]
# Who acts: explicit --by, else the CI actor, else the login name.
Actor = Annotated[
    str, typer.Option("--by", envvar=["LIGHTBOX_ACTOR", "GITHUB_ACTOR", "USER"], help="who acts")
]


def _model_settings(model: str | None):
    return load_settings(model_name=model) if model else load_settings()


@app.command()
def golden(rebuild: Annotated[bool, typer.Option(help="re-render even if it exists")] = False) -> None:
    """Build (once) and version the frozen golden set the gates judge on."""
    from pipelines import golden as stage

    _print(stage.run(load_settings(), rebuild=rebuild))


@app.command()
def gates(
    version: Annotated[str, typer.Option(help="registered model version")],
    model: Model = None,
    record: Annotated[bool, typer.Option(help="attach verdict + report to the version")] = True,
) -> None:
    """Run the gates on a version and attach the evidence; exits 1 if they fail."""
    from pipelines import validate_model

    report = validate_model.run(_model_settings(model), version, record=record)
    _print(report.to_dict())
    if not report.passed:
        typer.secho("gates FAILED:\n  " + "\n  ".join(report.verdict.reasons), fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def promote(
    version: Annotated[str, typer.Option(help="registered model version")],
    model: Model = None,
    alias: Annotated[str | None, typer.Option(help="alias to set (default: champion)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="decide and report; move nothing")] = False,
    reason: Annotated[str, typer.Option(help="why (recorded on the version)")] = "",
    by: Actor = "unknown",
) -> None:
    """Gate the version and move the alias; exits 1 with the reasons if it is refused."""
    from pipelines import promote as stage

    try:
        result = stage.run(
            _model_settings(model), version, alias=alias, dry_run=dry_run, actor=by, reason=reason
        )
    except stage.GateFailed as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    _print(result)


@app.command()
def rollback(
    model: Model = None,
    alias: Annotated[str | None, typer.Option(help="alias to roll back (default: champion)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would change; move nothing")] = False,
    reason: Annotated[str, typer.Option(help="why (recorded on both versions)")] = "",
    by: Actor = "unknown",
) -> None:
    """Restore the previous champion (alias `previous`)."""
    from pipelines import promote as stage

    try:
        _print(stage.rollback(_model_settings(model), alias=alias, dry_run=dry_run, actor=by, reason=reason))
    except stage.RollbackImpossible as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None


@app.command()
def lineage(
    uri: Annotated[str, typer.Argument(help="models:/NAME/VERSION or models:/NAME@ALIAS")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Print model version -> run -> dataset version -> feature service -> code revision."""
    from pipelines import lineage as stage

    try:
        lin = stage.run(load_settings(), uri)
    except ValueError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(lin.to_dict(), indent=2) if as_json else stage.format_lineage(lin))


@app.command()
def serve(
    alias: Annotated[str | None, typer.Option(help="registry alias to serve")] = None,
) -> None:
    """Serve models:/<name>@<alias> over HTTP (POST /predict)."""
    import logging

    from serving import server

    # The server's own lines (compute layout, calibrated batch cap, hot swaps) next to uvicorn's.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server.run(load_settings(), alias=alias)


@dags_app.command("test")
def dags_test(dag_id: str, conf: Annotated[str | None, typer.Option(help="JSON params")] = None) -> None:
    """Run one DAG end to end with `airflow dags test` on the embedded Airflow home."""
    from lightbox.adapters import airflow_runner

    try:
        from lightbox.demo import TaskProgress

        log = airflow_runner.dags_test(
            load_settings(), dag_id, json.loads(conf) if conf else None, progress=TaskProgress()
        )
    except airflow_runner.DagRunFailed as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{dag_id}: success (log: {log})")


@app.command()
def demo(
    sources: Annotated[int | None, typer.Option(help="source images (default: settings)")] = None,
    variants: Annotated[int | None, typer.Option(help="variants per source (default: settings)")] = None,
    trials: Annotated[int | None, typer.Option(help="Ray Tune trials (default: settings)")] = None,
    epochs: Annotated[int | None, typer.Option(help="max epochs per trial (default: settings)")] = None,
    keep_serving: Annotated[bool, typer.Option(help="leave the server running")] = False,
) -> None:
    """The whole lifecycle through Airflow, then the server and one prediction."""
    from lightbox import demo as demo_mod
    from lightbox.adapters.airflow_runner import DagRunFailed

    s = load_settings()
    try:
        demo_mod.run(
            s,
            sources=sources or s.dataset_sources,
            variants=variants or s.dataset_variants,
            trials=trials or s.tune_trials,
            epochs=epochs or s.tune_epochs,
            keep_serving=keep_serving,
        )
    except DagRunFailed as exc:
        typer.secho(f"demo stopped: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@app.command()
def consume(
    max_messages: Annotated[int | None, typer.Option(help="stop after about this many")] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="stop after this many idle seconds")] = None,
) -> None:
    """Score images named on the upload queue with the champion into PostgreSQL (LIGHTBOX_RESULTS_DSN)."""
    import logging

    from pipelines import score_uploads

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _print(score_uploads.run(load_settings(), max_messages=max_messages, idle_timeout_s=idle_timeout))


@app.command()
def enqueue(
    uris: Annotated[list[str], typer.Argument(help="s3://bucket/key, file:// or absolute image paths")],
) -> None:
    """Publish upload messages (image_id = the file name without extension) for `lightbox consume`."""
    from pathlib import PurePosixPath

    from lightbox.adapters import queue

    messages = [{"image_id": PurePosixPath(u).stem, "uri": u} for u in uris]
    typer.echo(f"published {queue.publish(load_settings(), messages)} to {load_settings().queue_name}")


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings (environment + defaults)."""
    from lightbox.settings import redacted

    typer.echo(json.dumps(redacted(load_settings()), indent=2, default=str))


if __name__ == "__main__":
    app()
