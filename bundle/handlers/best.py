"""Record the validation metrics of the best epoch, and report them when the run ends."""

from __future__ import annotations

import json
import logging
import math
import os

from ignite.engine import Engine, Events

__all__ = ["BestMetrics", "report_best"]

logger = logging.getLogger(__name__)


class BestMetrics:
    """Write all validation metrics of the best epoch (by the evaluator's key metric) to a JSON file.

    Attach to the evaluator; MONAI's workflow updates ``state.best_metric_epoch`` before this handler runs.

    Args:
        output_file: JSON path, rewritten each time the key metric improves.
    """

    def __init__(self, output_file: str) -> None:
        self.output_file = output_file

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch:
            return
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
        os.makedirs(os.path.dirname(os.path.abspath(self.output_file)), exist_ok=True)
        with open(self.output_file, "w", encoding="utf-8") as f:
            json.dump({"epoch": int(engine.state.epoch), "metrics": metrics}, f, indent=1)


def report_best(summary_file: str) -> dict:
    """Print the best-epoch validation metrics (one line) and return them; an empty dict when none were saved."""
    if not os.path.isfile(summary_file):
        logger.warning(f"no validation summary at {summary_file}")
        return {}
    with open(summary_file) as f:
        summary = json.load(f)
    text = " ".join(f"{k}={v:.4f}" for k, v in summary["metrics"].items() if not math.isnan(v))
    line = f"best validation (epoch {summary['epoch']}): {text}"
    logger.info(line)
    print(line, flush=True)
    return summary
