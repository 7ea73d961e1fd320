"""MLflow tracking of a bundle run: MONAI's handler plus provenance tags, run files and the best-epoch summary."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Sequence

from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

from bundle.errors import TrainingInterrupted
from bundle.utils import config_tunables, provenance_tags

__all__ = ["MLflowTracker", "prepare_tracking_store"]

logger = logging.getLogger(__name__)


def prepare_tracking_store(tracking_uri: str, experiment_name: str | None = None) -> str:
    """Create a SQLite MLflow store's tables (and the experiment) once, under a file lock, before a run uses it.

    Two runs started at once into a new SQLite store (parallel folds, two trainings sharing ``--tracking_uri``) race
    on its schema migration (``ValueError: No such index ...``) and on creating the experiment (a UNIQUE constraint);
    with the store ready, their writes only wait on SQLite's own lock. Other stores (an MLflow server, a folder)
    are left alone.

    Args:
        tracking_uri: the MLflow tracking URI.
        experiment_name: the experiment the run logs into, created here when missing.

    Returns:
        ``tracking_uri``.
    """
    uri = str(tracking_uri)
    if not uri.startswith("sqlite:///"):
        return uri
    import mlflow

    path = uri[len("sqlite:///") :]
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(os.path.abspath(path) + ".lock", "a") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no POSIX locks here: best effort
            pass
        client = mlflow.MlflowClient(uri)
        if client.get_experiment_by_name(experiment_name or "Default") is None and experiment_name:  # the tables
            client.create_experiment(experiment_name)
    return uri


def _raise_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt(f"signal {signum}")


def _sigterm_as_interrupt() -> None:
    """Make SIGTERM (a scheduler's stop, ``kill``) end a run as Ctrl-C does, so its MLflow run is marked killed.

    Only in the main thread and only where SIGTERM still has the system's default action (a program's own handler
    is kept).
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)


RUN_KEYS = ("tracking_uri", "experiment_name", "run_name", "parent_run_id", "bundle_root")


class MLflowTracker(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` with what every run of this bundle records.

    On top of MONAI's parameters, per-iteration loss and per-epoch metrics it logs, when the run starts, the
    provenance tags (package versions, git commit) and ``start_artifacts`` (the split, the resolved config); when
    the run completes, ``artifacts`` (the best checkpoint) and the best-epoch metrics from ``summary_file`` as
    ``best_<name>``.

    A run can be nested under a parent (``parent_run_id``: MLflow's own ``mlflow.parentRunId`` tag, which its UI
    shows as a child run), and a workflow can log into an existing run (``resume_run_id``), e.g. the test
    metrics of an evaluation into the run that trained the model.

    Args:
        tags: extra run tags, merged over the provenance tags.
        parent_run_id: id of the parent run (None: a top-level run).
        resume_run_id: id of an existing run to log into instead of starting one (None: found or created by
            ``run_name`` as MONAI's handler does).
        start_artifacts: files logged as soon as the run starts (missing ones are skipped).
        summary_file: JSON written by :class:`bundle.handlers.BestMetrics`, read when the run completes.
        bundle_root: repository whose git commit is recorded.
        log_state_params: log the engine's ``max_epochs`` and ``epoch_length`` as parameters (MONAI's default);
            False for a first stage whose run a second stage continues (its own values would clash).
        artifact_dir: folder of the run's artifacts that this handler's files go to (None: the top), e.g. ``test``
            for an evaluation logged into its training run.
        config_file: the run's merged config (``config.json``, written by the workflow's ``initialize``): its
            tunables (:func:`bundle.utils.config_tunables`) are logged as parameters when the run starts, with
            ``experiment_param`` (derived values: class names, the world size, ...) over them; a missing file logs
            ``experiment_param`` alone.
        run: the settings every tracker of a workflow shares (:data:`RUN_KEYS`: the store, the experiment, the run
            name, the parent run, the bundle root), e.g. the configs' ``@mlflow_run``; explicit arguments win.
        kwargs: arguments of ``monai.handlers.MLFlowHandler`` (``tracking_uri``, ``experiment_name``,
            ``run_name``, ``experiment_param``, ``artifacts``, ...).
    """

    def __init__(
        self,
        tags: dict | None = None,
        parent_run_id: str | None = None,
        resume_run_id: str | None = None,
        start_artifacts: Sequence[str] | None = None,
        summary_file: str | None = None,
        bundle_root: str | None = None,
        artifact_dir: str | None = None,
        log_state_params: bool = True,
        config_file: str | None = None,
        run: dict | None = None,
        **kwargs,
    ) -> None:
        shared = dict(run or {})
        unknown = set(shared) - set(RUN_KEYS)
        if unknown:
            raise ValueError(f"run: unknown keys {sorted(unknown)}; allowed {list(RUN_KEYS)}")
        shared_parent, shared_root = shared.pop("parent_run_id", None), shared.pop("bundle_root", None)
        parent_run_id = parent_run_id or shared_parent
        bundle_root = bundle_root or shared_root or "."
        super().__init__(**{**shared, **kwargs})  # the store, experiment and run name; explicit ones win
        self.tags = dict(tags or {})
        if parent_run_id:
            self.tags["mlflow.parentRunId"] = parent_run_id
        self.resume_run_id = resume_run_id or None
        self.start_artifacts = [p for p in (start_artifacts or []) if p]
        self.summary_file = summary_file
        self.bundle_root = bundle_root
        self.artifact_dir = artifact_dir or None
        self.config_file = config_file or None
        if not log_state_params:
            self.default_tracking_params = []

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        # ignite calls only the first EXCEPTION_RAISED handler (each re-raises): this one goes before StatsHandler's
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)
        handlers = engine._event_handlers[Events.EXCEPTION_RAISED]
        handlers.insert(0, handlers.pop())

    def failed(self, engine: Engine, e: BaseException) -> None:
        """End the run as ``KILLED`` (Ctrl-C, SIGTERM) or ``FAILED`` (an error), not left ``RUNNING``.

        Raises:
            TrainingInterrupted: one line for an interrupt (no traceback), saying what was kept.
            BaseException: any other exception ``e``, unchanged.
        """
        run_id, status = self.run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        if self.cur_run:
            try:
                self.client.set_terminated(run_id, status)
            finally:
                self.cur_run = None
                self._dispose_sqlite_store()
        if isinstance(e, KeyboardInterrupt):
            epoch, last = getattr(engine.state, "epoch", 0), getattr(engine.state, "last_checkpoint", None)
            how = f"continue with --resume_from {last}" if last else "no epoch finished yet"
            raise TrainingInterrupted(
                f"interrupted in epoch {epoch}: MLflow run {run_id} marked {status}; {how} (a "
                "cross-validation reruns only its unfinished folds)"
            ) from None
        raise e

    @property
    def run_id(self) -> str | None:
        """Id of the MLflow run, once started."""
        return self.cur_run.info.run_id if self.cur_run else None

    def start(self, engine: Engine) -> None:
        _sigterm_as_interrupt()
        if self.config_file and os.path.isfile(self.config_file) and not self.cur_run:
            with open(self.config_file, encoding="utf-8") as f:
                tunables = config_tunables(json.load(f))
            self.experiment_param = {**tunables, **(self.experiment_param or {})}
            self.config_file = None  # once: a second start (a resumed run) must not log them again
        if self.resume_run_id and not self.cur_run:
            self.cur_run = self.client.get_run(self.resume_run_id)
            if self.cur_run.info.status != "RUNNING":
                self.client.update_run(self.resume_run_id, status="RUNNING")
        if self.experiment_param and self.cur_run:  # a resumed run: log only the parameters it does not hold yet
            self.experiment_param = dict(self.experiment_param)
            self._delete_exist_param_in_dict(self.experiment_param)
        super().start(engine)
        tags = {**provenance_tags(self.bundle_root), **{k: str(v) for k, v in self.tags.items()}}
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)
        for path in self.start_artifacts:
            self.log_artifact(path, self.artifact_dir)
        logger.info(f"MLflow run {self.run_id} ({self.cur_run.info.run_name}) in {self.client.tracking_uri}")

    def _log_params(self, params: dict) -> None:
        """MONAI's, in batches of 100 (MLflow's limit on parameters per call)."""
        items = list(params.items())
        for i in range(0, len(items), 100):
            super()._log_params(dict(items[i : i + 100]))

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        """Log a file to the current run (nothing when no run is active or the file is missing)."""
        if self.run_id and path and os.path.isfile(path):
            self.client.log_artifact(self.run_id, path, artifact_path)

    def complete(self) -> None:
        if self.cur_run and self.summary_file and os.path.isfile(self.summary_file):
            with open(self.summary_file) as f:
                summary = json.load(f)
            best = {f"best_{k}": float(v) for k, v in summary.get("metrics", {}).items()}
            best["best_epoch"] = float(summary.get("epoch", 0))
            self._log_metrics(best, step=int(summary.get("epoch", 0)))
            self.log_artifact(self.summary_file, self.artifact_dir)
        if self.artifact_dir and self.artifacts and self.cur_run:
            for path in self._parse_artifacts():
                self.log_artifact(path, self.artifact_dir)
            return
        super().complete()
