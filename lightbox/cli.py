"""The `lightbox` command: one sub-command per lifecycle stage, each a thin call into pipelines/."""

from __future__ import annotations

import enum
import json
import sys
import traceback
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer import _click  # Typer vendors Click; its Context is the type TyperGroup.invoke takes
from typer._click.globals import get_current_context
from typer.core import TyperGroup

from lightbox import settings as settings_module
from lightbox.errors import import_errors, known_error
from lightbox.settings import Settings

if TYPE_CHECKING:
    from lightbox.manifest import LabelSpec

_DEBUG = "lightbox.debug"  # ctx.meta key: set by `lightbox --debug`, read where errors are mapped


class _LightboxGroup(TyperGroup):
    """The `lightbox` group: every sub-command (nested ones too) runs inside its invoke, so a known error
    from any of them is mapped here, once: one red line and its exit code, a traceback only with
    --debug."""

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # Ctrl-C: the stages leave nothing half-done (training settles what it interrupted before
            # the interrupt reaches here: pipelines/doctor.settled_if_interrupted; nothing is moved), so
            # one line, and the shell's code for an interrupt.
            typer.secho(
                "interrupted: nothing half-done is kept; run the command again to go on", fg="red", err=True
            )
            raise typer.Exit(130) from None
        except Exception as exc:
            known = known_error(exc)
            if known is None:  # a bug, or Click's own (typer.Exit, a usage error): not ours to reword
                raise
            message, code = known
            if ctx.meta.get(_DEBUG):
                traceback.print_exc(file=sys.stderr)
            typer.secho(message, fg="red", err=True)
            raise typer.Exit(code) from None


app = typer.Typer(
    cls=_LightboxGroup,
    help="lightbox: image scoring and tagging models, from labeled data to an endpoint.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Labeled image data: build, validate, version.", no_args_is_help=True)
dags_app = typer.Typer(help="Run the Airflow DAGs on the embedded home.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(dags_app, name="dags")


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[
        bool, typer.Option("--debug", help="on a known error, print the full traceback before its line")
    ] = False,
) -> None:
    ctx.meta[_DEBUG] = debug


def _print(result: object) -> None:
    if is_dataclass(result):
        result = asdict(result)  # type: ignore[arg-type]
    typer.echo(json.dumps(result, indent=2, default=str))


def _fail(message: str, code: int = 1) -> typer.Exit:
    """A known error met in the CLI itself: one red line with what to do; the traceback of the error
    being handled too under `lightbox --debug` (as for the errors mapped in _LightboxGroup)."""
    ctx = get_current_context(silent=True)
    if ctx is not None and ctx.meta.get(_DEBUG) and sys.exc_info()[0] is not None:
        traceback.print_exc(file=sys.stderr)
    typer.secho(message, fg="red", err=True)
    return typer.Exit(code)


def load_settings(**overrides: object) -> Settings:
    """lightbox.settings.load_settings for a command; an unknown LIGHTBOX_* variable or a value out of its
    bounds raises SettingsError, which known_error makes one red line each and exit code 2."""
    return settings_module.load_settings(**overrides)


def _tracked(settings: Settings, *, read_only: bool = True) -> Settings:
    """The settings of a command that uses MLflow, once its tracking URI is checked: a wrong or
    unreachable one (TrackingUnavailable) is one red line within seconds, not a hang or an empty
    registry. ``read_only``: the command only reads the registry (serve, promote, lineage, ...), so a
    missing registry file means the wrong project, not a new one; only training may create it."""
    from lightbox.adapters.tracking_check import check_tracking_uri

    check_tracking_uri(settings, read_only=read_only)
    return settings


@data_app.command("import")
def data_import(
    source: Annotated[str, typer.Argument(help="a folder, an export file, or s3://bucket/prefix")],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="imagefolder | labelstudio | classfolders | cvat | fiftyone | celeba | ava | parquet "
            "| groundtruth | vertex | labelbox | azureml | coco (default: detected)",
        ),
    ] = None,
    score_column: Annotated[
        str | None, typer.Option(help="score column / Label Studio control / Labelbox question")
    ] = None,
    tags_column: Annotated[
        str | None,
        typer.Option(help="tags column / Label Studio control / 0/1 columns A,B,C / Labelbox questions A,B"),
    ] = None,
    split_column: Annotated[str | None, typer.Option(help="split column (train/validation/test)")] = None,
    group_column: Annotated[str | None, typer.Option(help="group column (kept within one split)")] = None,
    score_range: Annotated[str | None, typer.Option(help="LOW,HIGH (default: observed min,max)")] = None,
    local_files_root: Annotated[
        str | None, typer.Option(help="Label Studio LOCAL_FILES_DOCUMENT_ROOT (default: the export's folder)")
    ] = None,
    media_root: Annotated[
        str | None,
        typer.Option(help="Label Studio media folder for /data/upload/ (default: the export's folder)"),
    ] = None,
    append: Annotated[
        bool, typer.Option("--append", help="add to the dataset; old images keep their splits")
    ] = False,
    golden: Annotated[
        str | None, typer.Option(help="your own golden set (any format) instead of a slice")
    ] = None,
) -> None:
    """Bring labelled photos into data/ (your files are only read), then validate, version, featurize
    with `lightbox data validate`, `lightbox data version`, `lightbox features` (or the lightbox_data DAG)."""
    from pipelines import importer

    options = importer.ImportOptions(
        format=format,
        score_column=score_column,
        tags_column=tags_column,
        split_column=split_column,
        group_column=group_column,
        score_range=score_range,
        local_files_root=local_files_root,
        media_root=media_root,
        append=append,
        golden=golden,
    )
    try:
        result = importer.run(load_settings(), source, options)
    except import_errors() as exc:
        raise _fail(f"import failed: {exc}") from None
    _print(result)
    for note in result.notes:
        typer.secho(f"note: {note}", fg="yellow", err=True)


@data_app.command("build")
def data_build(
    sources: Annotated[int | None, typer.Option(help="number of source images")] = None,
    variants: Annotated[int | None, typer.Option(help="distorted variants per source")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Render the synthetic demo set and import it into data/ (one source among others)."""
    from pipelines import data

    _print(data.run(load_settings(), n_sources=sources, variants=variants, seed=seed))


@data_app.command("validate")
def data_validate() -> None:
    """Great-expectations suite + image integrity; quarantines corrupt files."""
    from pipelines import validate_data

    try:
        result = validate_data.run(load_settings())
    except validate_data.DataValidationError as exc:
        _print_quarantine(exc.result)
        raise _fail(str(exc)) from None
    _print_quarantine(result)
    typer.echo(f"data validation passed: {result.n_images} images (report: {result.report_md})")


def _print_quarantine(result) -> None:  # noqa: ANN001 - a DataValidationResult
    for image_id, reason in result.quarantined:
        typer.secho(f"quarantined {image_id}: {reason}", fg="yellow", err=True)
    for origin, reason in result.import_problems:
        typer.secho(f"quarantined at import {origin}: {reason}", fg="yellow", err=True)
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", fg="yellow", err=True)


@data_app.command("version")
def data_version() -> None:
    """dvc add + push data/, commit data.dvc; prints the dataset version."""
    from pipelines import version_data

    _print(version_data.run(load_settings()))


def _manifest_at(rev: str) -> list[dict[str, str]]:
    from lightbox import manifest
    from lightbox.adapters import dvc_repo

    return manifest.rows_from_bytes(dvc_repo.read_file_at(load_settings(), manifest.MANIFEST_NAME, rev))


def _spec_at(rev: str) -> LabelSpec:
    from lightbox import manifest
    from lightbox.adapters import dvc_repo

    try:
        data = dvc_repo.read_file_at(load_settings(), manifest.LABELS_NAME, rev)
    except dvc_repo.DataUnavailable:
        return manifest.LabelSpec()  # a version from before labels.json: no declared labels to compare
    return manifest.LabelSpec.from_json(data.decode("utf-8"))


@data_app.command("show")
def data_show(rev: Annotated[str, typer.Option(help="git revision of data.dvc")] = "HEAD") -> None:
    """Print the manifest summary of the dataset as it was at a git revision (read through DVC)."""
    from collections import Counter

    rows = _manifest_at(rev)
    splits = dict(Counter(r["split"] for r in rows))
    typer.echo(f"{len(rows)} images at {rev}; splits: {splits}")


@data_app.command("diff")
def data_diff(
    rev_a: Annotated[str, typer.Argument(help="git revision (of data.dvc) before")],
    rev_b: Annotated[str, typer.Argument(help="git revision after")] = "HEAD",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Images added, removed, relabelled and moved between two dataset versions."""
    from dataclasses import asdict

    from lightbox import manifest

    d = manifest.diff(_manifest_at(rev_a), _manifest_at(rev_b))
    labels = manifest.spec_changes(_spec_at(rev_a), _spec_at(rev_b))
    if as_json:
        _print({**asdict(d), "labels": labels})
        return
    typer.echo(
        f"{rev_a} -> {rev_b}: {len(d.added)} added, {len(d.removed)} removed, "
        f"{len(d.relabelled)} relabelled, {len(d.moved)} moved between splits"
    )
    for change in labels:
        typer.echo(f"! {change}")
    for image_id in d.added:
        typer.echo(f"+ {image_id}")
    for image_id in d.removed:
        typer.echo(f"- {image_id}")
    for image_id, before, after in d.relabelled:
        typer.echo(f"~ {image_id}: {before} -> {after}")
    for image_id, before, after in d.moved:
        typer.echo(f"> {image_id}: {before} -> {after}")


@app.command()
def features() -> None:
    """Compute image features (only for images without cached ones) and materialize them in Feast."""
    from pipelines import features as stage

    _print(stage.run(load_settings()))


class TrainMode(enum.StrEnum):
    heads = "heads"
    finetune = "finetune"


@app.command()
def train(
    trials: Annotated[int | None, typer.Option(help="Ray Tune trials", min=1)] = None,
    epochs: Annotated[int | None, typer.Option(help="max epochs per trial", min=1)] = None,
    mode: Annotated[
        TrainMode | None,
        typer.Option(help="heads (Feast features, fast) or finetune (the backbone too, from images)"),
    ] = None,
) -> None:
    """Tune, fit, log and register the model."""
    from lightbox.stdio import stdout_to_stderr
    from pipelines import train as stage

    # stdout holds the result only (`lightbox train > result.json`): Ray Tune's progress tables, printed
    # from Python and from its own threads and processes, go to stderr.
    with stdout_to_stderr():
        result = stage.run(
            _tracked(load_settings(), read_only=False),
            trials=trials,
            epochs=epochs,
            mode=mode.value if mode else None,
        )
    _print(result)


Model = Annotated[str | None, typer.Option("--model", help="registered model name (default: settings)")]
# Who acts: explicit --by, else the CI actor, else the login name.
Actor = Annotated[
    str, typer.Option("--by", envvar=["LIGHTBOX_ACTOR", "GITHUB_ACTOR", "USER"], help="who acts")
]


def _model_settings(model: str | None):
    return _tracked(load_settings(model_name=model) if model else load_settings())


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
    from pipelines import promote, validate_model

    settings = _model_settings(model)
    version = promote.resolve_version(settings, version)  # VersionNotFound lists the versions there are
    try:
        report = validate_model.run(settings, version, record=record)
    except FileNotFoundError as exc:  # gates only: a data or label file the gates read is missing
        raise _fail(str(exc)) from None
    _print(report.to_dict())
    if not report.passed:
        typer.secho("gates FAILED:\n  " + "\n  ".join(report.refusal_lines()), fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def quantize(
    version: Annotated[str, typer.Option(help="registered fp32 model version to quantize")],
    model: Model = None,
    calibration: Annotated[
        Path | None,
        typer.Option(help="folder of representative photos (default: the dataset's train split)"),
    ] = None,
) -> None:
    """Register an int8 candidate of a version (ONNX Runtime static quantization); gate and promote it
    like any other: `lightbox gates --version NEW`, `lightbox promote --version NEW`."""
    from pipelines import promote as promotion
    from pipelines import quantize as stage

    settings = _model_settings(model)
    version = promotion.resolve_version(settings, version)
    _print(stage.run(settings, version, calibration).to_dict())


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

    # Refused (gates, unloadable target, lost compare-and-set, lock held), no such version, or no frozen
    # golden set to judge on: nothing moved, and known_error prints what to do.
    settings = _model_settings(model)
    version = stage.resolve_version(settings, version)
    _print(stage.run(settings, version, alias=alias, dry_run=dry_run, actor=by, reason=reason))


@app.command()
def rollback(
    model: Model = None,
    alias: Annotated[str | None, typer.Option(help="alias to roll back (default: champion)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would change; move nothing")] = False,
    reason: Annotated[str, typer.Option(help="why (recorded on both versions)")] = "",
    by: Actor = "unknown",
) -> None:
    """Restore the previous champion (alias `previous`) once it is checked to load; exits 1 otherwise."""
    from pipelines import promote as stage

    # PromotionRefused (nothing to restore, it does not load, the aliases moved): known_error's line.
    _print(stage.rollback(_model_settings(model), alias=alias, dry_run=dry_run, actor=by, reason=reason))


@app.command()
def lineage(
    uri: Annotated[str, typer.Argument(help="models:/NAME/VERSION or models:/NAME@ALIAS")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Print model version -> run -> dataset version -> feature service -> code revision."""
    from pipelines import lineage as stage

    lin = stage.run(_tracked(load_settings()), uri)
    typer.echo(json.dumps(lin.to_dict(), indent=2) if as_json else stage.format_lineage(lin))


@app.command()
def serve(
    alias: Annotated[str | None, typer.Option(help="registry alias to serve (default: champion)")] = None,
    host: Annotated[
        str | None, typer.Option(help="address to listen on (LIGHTBOX_SERVE_HOST, default 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port (LIGHTBOX_SERVE_PORT, default 8080)")] = None,
    runtime: Annotated[
        str | None,
        typer.Option(
            help="auto (the fastest the gates verified), torch or onnxruntime (LIGHTBOX_SERVE_RUNTIME)"
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(help="several models: NAME@ALIAS,... (LIGHTBOX_SERVE_MODELS; the first is the primary)"),
    ] = None,
) -> None:
    """Serve models:/<name>@<alias> (or several, --models) over HTTP (POST /predict)."""
    import logging

    from serving import server

    # The server's own lines (compute layout, calibrated batch cap, hot swaps) next to uvicorn's.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Flags win over the environment; they go through the same validation (a bad port is one line).
    flags = {"serve_host": host, "serve_port": port, "serve_runtime": runtime, "serve_models": models}
    settings = load_settings(**{k: v for k, v in flags.items() if v is not None})
    server.run(_tracked(settings), alias=alias)


@app.command()
def monitor(
    alias: Annotated[str | None, typer.Option(help="the version at this alias (default: champion)")] = None,
    source: Annotated[
        str | None,
        typer.Option(help="`postgres` (results table) or a scoring parquet folder (default: catalog output)"),
    ] = None,
    last: Annotated[int, typer.Option(min=50, help="how many of the newest predictions")] = 5000,
) -> None:
    """Compare a served version's recent predictions with its test split; exits 1 when they drifted."""
    from pipelines import monitor as stage

    result = stage.run(_tracked(load_settings()), alias=alias, source=source, last=last)
    _print(result.to_dict())
    if result.drifted:
        typer.secho("drift:\n  " + "\n  ".join(result.reasons), fg="red", err=True)
        raise typer.Exit(1)


@dags_app.command("test")
def dags_test(dag_id: str, conf: Annotated[str | None, typer.Option(help="JSON params")] = None) -> None:
    """Run one DAG end to end with `airflow dags test` on the embedded Airflow home."""
    from lightbox.adapters import airflow_runner

    try:
        from lightbox.demo import TaskProgress

        params = airflow_runner.parse_conf(dag_id, conf)
        log = airflow_runner.dags_test(load_settings(), dag_id, params, progress=TaskProgress())
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
    from pipelines.data import DemoSetRefused

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
    except (DagRunFailed, DemoSetRefused) as exc:
        typer.secho(f"demo stopped: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@app.command()
def consume(
    max_messages: Annotated[int | None, typer.Option(help="stop after about this many")] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="stop after this many idle seconds")] = None,
    online: Annotated[
        bool,
        typer.Option(
            "--online", help="also publish scores and embeddings to Feast online (LIGHTBOX_SCORE_ONLINE)"
        ),
    ] = False,
) -> None:
    """Score images named on the upload queue with the champion into PostgreSQL (LIGHTBOX_RESULTS_DSN)."""
    import logging

    from pipelines import score_uploads

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _tracked(load_settings(**({"score_online": True} if online else {})))
    _print(score_uploads.run(settings, max_messages=max_messages, idle_timeout_s=idle_timeout))


@app.command()
def score(
    source: Annotated[
        str, typer.Argument(help="a folder, s3://bucket/prefix, a .txt of URIs, or a .parquet")
    ],
    out: Annotated[str, typer.Option("--out", help="a folder of parquet parts, or `postgres`")],
    model: Annotated[
        str | None,
        typer.Option("--model", help="models:/NAME@ALIAS or models:/NAME/VERSION (default: the champion)"),
    ] = None,
    online: Annotated[
        bool,
        typer.Option(
            "--online", help="also publish scores and embeddings to Feast online (LIGHTBOX_SCORE_ONLINE)"
        ),
    ] = False,
) -> None:
    """Score a whole catalog on Ray Data (LIGHTBOX_RAY_ADDRESS, else a local Ray); a rerun resumes."""
    import logging

    from lightbox.catalog import CatalogError, StorageUnavailable
    from lightbox.results import BadDestination
    from lightbox.source_tree import SourceNotFound
    from pipelines import score_catalog
    from pipelines.lineage import parse_model_uri

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name, version, alias = parse_model_uri(model) if model else (None, None, None)  # BadModelUri: exit 2
    overrides: dict[str, object] = {"score_online": True} if online else {}
    if name:
        overrides["model_name"] = name
    settings = _tracked(load_settings(**overrides))
    try:
        result = score_catalog.run(settings, source, out, alias=alias, version=version)
    except (SourceNotFound, CatalogError, BadDestination) as exc:
        raise _fail(f"score: {exc}", 2) from None
    except StorageUnavailable as exc:
        raise _fail(f"score stopped, storage unavailable: {exc}; rerun to resume") from None
    _print(result)
    typer.secho(result.summary(), fg="green" if not result.failed else "yellow", err=True)


@app.command()
def enqueue(
    uris: Annotated[list[str], typer.Argument(help="s3://bucket/key, file:// or image paths")],
) -> None:
    """Publish upload messages for `lightbox consume` (which keys each result by its content hash)."""
    from lightbox.adapters import queue

    try:
        messages = [{"uri": upload_uri(u)} for u in uris]
    except ValueError as exc:
        raise _fail(f"enqueue: {exc}", 2) from None
    settings = load_settings()
    typer.echo(f"published {queue.publish(settings, messages)} to {settings.queue_name}")


def upload_uri(uri: str) -> str:
    """What a message names for ``uri``: s3:// as it is, a local path (or file://) made absolute, since
    the consumer runs elsewhere; ValueError for a file that is not there, or another scheme."""
    import os

    from lightbox.catalog import absolute_uri

    if "://" in uri and not uri.startswith(("s3://", "file://")):
        raise ValueError(f"{uri}: expected s3://bucket/key, file:// or a path to an image")
    found = absolute_uri(os.path.expanduser(uri), os.getcwd())
    if found.startswith("s3://"):
        return found
    path = os.path.abspath(found)  # ../x.jpg made /the/folder/x.jpg; a symlink stays as named
    if not os.path.isfile(path):
        raise ValueError(f"{uri}: no such file ({path}); give an existing image's path")
    return path


@app.command()
def doctor(
    repair: Annotated[bool, typer.Option("--repair", help="repair what is listed")] = False,
) -> None:
    """List what killed runs left behind (half-built folders, DAG runs and MLflow runs left running,
    models left pending, versions never gated, alias locks of dead holders); --repair fixes it. Exits 1
    while any is left. Versions not gated yet (trained, gates not run) are notes: the per-stage
    workflow's normal state, exit 0."""
    from pipelines import doctor as stage

    s = load_settings()
    problems = stage.check(s)
    for p in problems:
        typer.echo(p.describe())
    for note in stage.notes(s):
        typer.echo(f"note: {note}")
    if not problems:
        typer.echo("nothing left behind by killed runs")
        return
    if not repair:
        raise _fail(f"{len(problems)} left behind by killed runs: repair with `lightbox doctor --repair`")
    stage.repair(problems)
    left = stage.check(s)
    if left:
        raise _fail(f"repaired {len(problems) - len(left)}, {len(left)} still left: see above")
    typer.echo(f"repaired {len(problems)}")


@app.command("settings")
def show_settings() -> None:
    """Print the settings (environment + defaults) and, under `effective`, what the unset ones resolve to."""
    from lightbox.settings import effective, redacted

    s = load_settings()
    typer.echo(json.dumps(redacted(s) | {"effective": effective(s)}, indent=2, default=str))


@app.command("airflow")
def airflow_ui() -> None:
    """Start the Airflow UI on the embedded home (API server, scheduler, DAG processor, triggerer on
    127.0.0.1) and print its URL and login; Ctrl-C stops it."""
    import logging

    from lightbox.adapters import airflow_runner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = load_settings()
    secrets = airflow_runner.password_file(s)

    def ready() -> None:
        typer.secho(f"\nAirflow UI: {airflow_runner.ui_url()}", fg="green", bold=True)
        # Written by the API server on its first start; the file maps each user to its password.
        login = json.loads(secrets.read_text()) if secrets.is_file() else {}
        for user, password in login.items():
            typer.echo(f"  login: {user} / {password}   (from {secrets})")
        if not login:
            typer.echo(f"  login: the passwords are in {secrets} (not written yet)")

    typer.echo(f"starting Airflow on {s.airflow_home_path} (first start: about a minute)")
    raise typer.Exit(airflow_runner.run_ui(s, ready))


@app.command("mlflow")
def mlflow_ui(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1", min=1, max=65535)] = 5000,
) -> None:
    """Start the MLflow UI on the tracking store and artifact root of the settings; Ctrl-C stops it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    s = load_settings()
    root = s.artifact_root
    if "://" not in root:  # a local folder: the same file:// URI the experiments were created with
        root = Path(root).resolve().as_uri()
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        s.tracking_uri,
        "--default-artifact-root",
        root,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    import signal

    from lightbox.adapters.airflow_runner import interrupt_on_sigterm

    typer.secho(f"MLflow UI: http://127.0.0.1:{port}  (experiment {s.mlflow_experiment})", fg="green")
    # Its own process group, stopped as a whole: `mlflow server` forks workers.
    proc = subprocess.Popen(cmd, cwd=s.project_dir, start_new_session=True)
    signal.signal(signal.SIGTERM, interrupt_on_sigterm)  # a stop (SIGTERM) stops the server too
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
