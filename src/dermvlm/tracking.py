"""Experiment tracking of a pipeline run (``logging: mlflow | wandb | tensorboard | trackio``, several allowed):
every stage reports through transformers' own callbacks (``report_to``) and the evaluation's metrics and plots go
to the same place.

- **MLflow**: one run named after the config (``MLFLOW_TRACKING_URI``, default ``sqlite:///runs/NAME/mlflow.db``
  with the artifacts in ``runs/NAME/mlartifacts``, not MLflow's ``./mlruns`` of the working directory; experiment
  ``MLFLOW_EXPERIMENT_NAME`` or the config's name), each stage a nested run, the evaluation's metrics
  (``eval/SUITE/TYPE/METRIC``) and PNGs on the parent run.
- **W&B**: one run per stage and one for the evaluation, grouped under the config's name (``WANDB_MODE=offline``
  writes them to ``runs/NAME/wandb`` without network).
- **TensorBoard**: each stage's training log in ``runs/NAME/STAGE/logs``; **Trackio**: its local project.

``check()`` refuses, in one line and before anything trains, a tracking server that does not answer or W&B
without a key when it is not offline; a tracking server that stops answering during the run is a ``TrackingError``
naming it (MLflow's client retries 3 times within about 7 s by default here, instead of its own 7 times over
about 2 minutes; ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``_BACKOFF_FACTOR`` / ``_TIMEOUT`` still decide)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dermvlm.config import ConfigError

log = logging.getLogger(__name__)


def flat_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numeric leaves of an evaluation's ``metrics`` by question type (``eval/SUITE/mcq/accuracy``)."""
    out: dict[str, float] = {}
    for kind, values in (metrics.get("types") or {}).items():
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{prefix}/{kind}/{key}"] = float(value)
    return out


MLFLOW_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class TrackingError(RuntimeError):
    """The tracking server stopped answering during the run."""


class _FirstOnly(logging.Filter):
    """Lets a logger's first record through and drops the rest: MLflow's asynchronous logging queue and urllib3's
    retries report a dead server once per batch and retry (hundreds of lines in one stage); ``TrackingError`` says
    what happened, once, at the stage's end."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        first, self.seen = not self.seen, True
        return first


NOISY_ON_A_DEAD_SERVER = ("mlflow.utils.async_logging.async_logging_queue", "urllib3.connectionpool")


class Tracker:
    """The tracking of one pipeline run: ``check()``, ``stage(name)`` around each stage (yields ``report_to``),
    ``evaluation(suite, result, out_dir)`` per suite, ``close()``."""

    def __init__(self, backends: list[str], run_name: str, run_dir: Path, config: dict[str, Any]) -> None:
        self.backends = [b for b in backends if b != "none"]
        self.run_name, self.run_dir, self.config = run_name, Path(run_dir), config
        self.mlflow_run = None
        self.given_uri = os.environ.get("MLFLOW_TRACKING_URI")  # MLflow's set_tracking_uri sets it; close() unsets

    @property
    def report_to(self) -> list[str] | str:
        return self.backends or "none"

    # ------------------------------------------------------------------ before anything trains

    def check(self, source: str = "<config>") -> None:
        if "mlflow" in self.backends:
            self._check_mlflow(source)
        if "wandb" in self.backends:
            self._check_wandb(source)

    def mlflow_uri(self) -> str:
        return self.given_uri or f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}"

    def _check_mlflow(self, source: str) -> None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError(f"{source}: logging: mlflow is not installed (pip install 'dermvlm[tracking]')") from None
        uri = self.mlflow_uri()
        if uri.startswith(("http://", "https://")):
            import httpx

            try:
                httpx.get(f"{uri.rstrip('/')}/health", timeout=5.0).raise_for_status()
            except httpx.HTTPError as err:
                raise ConfigError(f"{source}: logging: mlflow: the tracking server {uri} does not answer "
                                  f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); start it "
                                  "or set MLFLOW_TRACKING_URI") from None

    def _check_wandb(self, source: str) -> None:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError(f"{source}: logging: wandb is not installed (pip install 'dermvlm[tracking]')") from None
        offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")
        if not offline and not os.environ.get("WANDB_API_KEY") and not _netrc_has("api.wandb.ai"):
            raise ConfigError(f"{source}: logging: wandb: no W&B API key (set WANDB_API_KEY or run `wandb login`); "
                              f"or set WANDB_MODE=offline to write the runs to {self.run_dir / 'wandb'} without "
                              "network")

    # ------------------------------------------------------------------ stages

    def _start_mlflow(self) -> None:
        if self.mlflow_run is not None:
            return
        import mlflow

        for key, value in MLFLOW_RETRIES.items():
            os.environ.setdefault(key, value)
        for name in NOISY_ON_A_DEAD_SERVER:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _FirstOnly) for f in logger.filters):
                logger.addFilter(_FirstOnly())

        mlflow.set_tracking_uri(self.mlflow_uri())
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or self.run_name
        if self.given_uri is None and mlflow.get_experiment_by_name(name) is None:
            mlflow.create_experiment(name, artifact_location=(self.run_dir / "mlartifacts").resolve().as_uri())
        mlflow.set_experiment(name)
        self.mlflow_run = mlflow.start_run(run_name=self.run_name)
        mlflow.log_params({"config_name": self.run_name, "seed": self.config.get("seed")})
        log.info("logging to MLflow at %s (run %s)", self.mlflow_uri(), self.mlflow_run.info.run_id)

    @contextmanager
    def stage(self, name: str, kind: str, stage_dir: Path) -> Iterator[list[str] | str]:
        """Around one stage's training: MLflow's stage runs nest under the pipeline's run; W&B gets one run per
        stage in the config's group; TensorBoard writes to ``STAGE/logs``."""
        env = {"TENSORBOARD_LOGGING_DIR": str(Path(stage_dir) / "logs")} if "tensorboard" in self.backends else {}
        if "mlflow" in self.backends:
            self._start_mlflow()
            env.update(MLFLOW_TRACKING_URI=self.mlflow_uri(), MLFLOW_NESTED_RUN="TRUE")
        if "wandb" in self.backends:
            self._wandb_init(f"{self.run_name}/{name}", kind)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with self._server_answers(f"stage {name}"):
                yield self.report_to
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            if "wandb" in self.backends:
                import wandb

                wandb.finish()

    def _wandb_init(self, name: str, job_type: str):
        import wandb

        self.run_dir.mkdir(parents=True, exist_ok=True)
        return wandb.init(project=os.environ.get("WANDB_PROJECT") or "dermvlm", group=self.run_name, name=name,
                          job_type=job_type, dir=str(self.run_dir), config=self.config, reinit="finish_previous")

    # ------------------------------------------------------------------ evaluation

    def evaluation(self, suite: str, result: dict[str, Any], out_dir: Path) -> None:
        """The evaluation's metrics (``eval/SUITE/TYPE/METRIC``) and its PNG plots, on the same run."""
        if not self.backends:
            return
        metrics = flat_metrics(result.get("metrics") or {}, f"eval/{suite}")
        pngs = sorted(Path(out_dir).glob("*.png"))
        if "mlflow" in self.backends:
            import mlflow

            with self._server_answers(f"the evaluation of {suite}"):
                self._start_mlflow()
                mlflow.log_metrics(metrics)
                for png in pngs:
                    mlflow.log_artifact(str(png), artifact_path=f"eval/{suite}")
                if (Path(out_dir) / "report.md").is_file():
                    mlflow.log_artifact(str(Path(out_dir) / "report.md"), artifact_path=f"eval/{suite}")
        if "wandb" in self.backends:
            import wandb

            run = self._wandb_init(f"{self.run_name}/eval-{suite}", "eval")
            run.log({**metrics, **{f"eval/{suite}/{p.stem}": wandb.Image(str(p)) for p in pngs}})
            wandb.finish()

    def close(self) -> None:
        """End the MLflow run; on a server that stopped answering only a warning (the run's own error, if any,
        is the one to show)."""
        if self.mlflow_run is not None:
            import mlflow
            from mlflow.exceptions import MlflowException

            try:
                mlflow.end_run()
            except MlflowException as err:
                log.warning("could not close the MLflow run at %s: %s", self.mlflow_uri(), str(err).splitlines()[0])
            self.mlflow_run = None
            if self.given_uri is None:  # the next run in this process gets its own store, not this one's
                os.environ.pop("MLFLOW_TRACKING_URI", None)

    @contextmanager
    def _server_answers(self, during: str) -> Iterator[None]:
        """MLflow's client failing inside the block (the server stopped answering, or refused a request) as one
        ``TrackingError`` naming the server; the stage resumes from its last checkpoint once it answers again."""
        if "mlflow" not in self.backends:
            yield
            return
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as err:
            first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise TrackingError(f"logging: mlflow: the tracking server {self.mlflow_uri()} failed during {during} "
                                f"({first}); start it again (or set logging: none) and rerun: finished stages are "
                                "kept and a stage resumes from its last checkpoint") from None


def _netrc_has(host: str) -> bool:
    import netrc

    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
