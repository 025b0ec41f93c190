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


@app.command()
def promote(
    version: Annotated[str, typer.Option(help="registered model version")],
    alias: Annotated[str | None, typer.Option(help="alias to set (default: champion)")] = None,
) -> None:
    """Run the quality gates and move the alias; exits 1 with the reasons if a gate fails."""
    from pipelines import promote as stage

    try:
        _print(stage.run(load_settings(), version, alias=alias))
    except stage.GateFailed as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None


@app.command()
def serve(
    alias: Annotated[str | None, typer.Option(help="registry alias to serve")] = None,
) -> None:
    """Serve models:/<name>@<alias> over HTTP (POST /predict)."""
    from serving import server

    server.run(load_settings(), alias=alias)


@dags_app.command("test")
def dags_test(dag_id: str, conf: Annotated[str | None, typer.Option(help="JSON params")] = None) -> None:
    """Run one DAG end to end with `airflow dags test` on the embedded Airflow home."""
    from lightbox.adapters import airflow_runner

    log = airflow_runner.dags_test(load_settings(), dag_id, json.loads(conf) if conf else None)
    typer.echo(f"{dag_id}: success (log: {log})")


@app.command()
def demo(
    sources: Annotated[int, typer.Option(help="source images")] = 20,
    variants: Annotated[int, typer.Option(help="variants per source")] = 12,
    trials: Annotated[int, typer.Option(help="Ray Tune trials")] = 4,
    epochs: Annotated[int, typer.Option(help="max epochs per trial")] = 30,
    keep_serving: Annotated[bool, typer.Option(help="leave the server running")] = False,
) -> None:
    """The whole lifecycle through Airflow, then the server and one prediction."""
    from lightbox import demo as demo_mod

    demo_mod.run(
        load_settings(),
        sources=sources,
        variants=variants,
        trials=trials,
        epochs=epochs,
        keep_serving=keep_serving,
    )


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings (environment + defaults)."""
    s = load_settings()
    typer.echo(s.model_dump_json(indent=2))


if __name__ == "__main__":
    app()
