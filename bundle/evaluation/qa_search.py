"""A hyperparameter search of the LA-region QA recipe with Optuna, judged on the validation parts only.

Each trial is one QA cross-validation (:func:`bundle.evaluation.qa_crossval.qa_cross_validate`) of a recipe drawn
from :data:`SEARCH_SPACE` on the same folds, with one seed, its own folder and its own MLflow parent run (a child per
fold) in the search's store. The objective is computed from the **validation** predictions only: every fold's
model scores its fold's validation patients (drawn from its training patients), and those predictions are pooled
over the folds (:func:`validation_objective`). The held-out (test) part of each fold is never looked at by the
search: the chosen recipe is then cross-validated with several seeds, and its out-of-fold figures are the honest
ones (docs/qa_crossval.md).

Optuna is used as intended (a TPE sampler, an SQLite study that resumes); the first trial is the default recipe, so
the search is compared with it on the same objective. A trial's folder is named after its parameters, so an
interrupted trial is re-enqueued and resumes from its finished folds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence

import numpy as np

__all__ = ["SEARCH_SPACE", "compare_runs", "qa_search", "suggest_recipe", "validation_objective"]

logger = logging.getLogger(__name__)

# name: (kind, choices) for categorical, (kind, low, high) for log-uniform floats; keys of DEFAULT_RECIPE
SEARCH_SPACE = {
    "epochs": ("categorical", [60, 100, 150]),
    "lr": ("log", 5e-4, 5e-3),
    "weight_decay": ("log", 1e-5, 1e-2),
    "ema_decay": ("categorical", [0.95, 0.98, 0.99]),
    "slices_per_scan": ("categorical", [4, 8, 12]),
    "size": ("categorical", [48, 64, 80]),
}
OBJECTIVES = ("mean", "fibrosis")


def suggest_recipe(trial, space: dict | None = None) -> dict:
    """The recipe overrides of one Optuna ``trial`` drawn from ``space`` (default :data:`SEARCH_SPACE`).

    Raises:
        ValueError: for an unknown kind in ``space``.
    """
    out = {}
    for name, spec in (space or SEARCH_SPACE).items():
        if spec[0] == "categorical":
            out[name] = trial.suggest_categorical(name, list(spec[1]))
        elif spec[0] == "log":
            out[name] = trial.suggest_float(name, float(spec[1]), float(spec[2]), log=True)
        else:
            raise ValueError(f"search space {name!r}: unknown kind {spec[0]!r} (categorical or log)")
    return out


def validation_objective(preds: Sequence[dict], objective: str = "mean") -> dict[str, float]:
    """Scores of a QA cross-validation from its folds' **validation** predictions, pooled over the folds.

    Per label: the balanced accuracy at logit 0 (the class-balanced decision, which a positive temperature does not
    move) and the AUROC of the logits, each 0.5 (chance) for a label with one class in the pooled validation parts.
    ``objective`` ``"mean"`` is the mean over the four labels of
    ``(balanced accuracy + AUROC) / 2``; ``"fibrosis"`` is that of the fibrosis verdict alone.

    Args:
        preds: the folds' predictions (:func:`bundle.evaluation.qa_crossval.load_predictions`), one seed.
        objective: one of :data:`OBJECTIVES`.

    Returns:
        ``{"objective": ..., "<label>.balanced_accuracy": ..., "<label>.auroc": ..., "n_val": ...}``.

    Raises:
        ValueError: for an unknown objective or no validation predictions.
    """
    from bundle.data.datalist import SCORE_KEYS
    from bundle.metrics.qa import binary_metrics

    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
    logits = [np.asarray(p["val_logits"], dtype=np.float64).reshape(-1, 4) for p in preds]
    targets = [np.asarray(p["val_targets"], dtype=np.float64).reshape(-1, 4) for p in preds]
    if not preds or not sum(len(x) for x in logits):
        raise ValueError("no validation predictions to score")
    x, y = np.concatenate(logits), np.concatenate(targets).astype(int)
    out: dict[str, float] = {"n_val": float(len(x))}
    per_label = []
    for j, label in enumerate(SCORE_KEYS):
        m = binary_metrics(y[:, j], (x[:, j] > 0).astype(int), x[:, j])
        ba, auc = m["balanced_accuracy"], m["auroc"]
        ba, auc = (0.5 if v != v else v for v in (ba, auc))  # one class in the pooled validation parts: chance
        out[f"{label}.balanced_accuracy"], out[f"{label}.auroc"] = ba, auc
        per_label.append((ba + auc) / 2)
    out["objective"] = per_label[SCORE_KEYS.index("fibrosis")] if objective == "fibrosis" else float(np.mean(per_label))
    return out


def compare_runs(cv_dirs: Sequence[str], strategy: str = "region") -> list[dict]:
    """Finished QA cross-validations (e.g. the rows of an ablation) side by side, each as its seed ensemble per fold
    (:func:`bundle.evaluation.qa_crossval.seed_ensembles`; a fold finished by one seed so far: that seed): the
    validation scores a choice between them may rest on (:func:`validation_objective`, the folds' validation patients
    pooled) and the out-of-fold figures it must not rest on (the held-out patients pooled), both balanced accuracy at
    logit 0 and AUROC per label.

    Args:
        cv_dirs: the runs' folders (``qa_cross_validate``'s ``output_dir``).
        strategy: the strategy compared.

    Returns:
        one dict per run: ``dir``, ``recipe`` (its overrides of the default), ``runs`` (folds x seeds), ``minutes``
        (per fold and seed), ``val`` (:func:`validation_objective`'s dict) and ``test`` (the same scores out of fold).

    Raises:
        DataError: for a folder without finished folds of ``strategy``.
    """
    from bundle.errors import DataError
    from bundle.evaluation.qa_crossval import DEFAULT_RECIPE, load_predictions, seed_ensembles

    out = []
    for d in cv_dirs:
        preds = load_predictions(d, strategy)
        if not preds:
            raise DataError(f"{d}: no finished fold of {strategy!r} (is it a QA cross-validation's folder?)")
        ens = seed_ensembles(preds)
        ens += [p for p in preds if p["fold"] not in {e["fold"] for e in ens}]  # folds finished by one seed so far
        as_val = [{"val_logits": p["test_logits"], "val_targets": p["test_targets"]} for p in ens]
        recipe = {}
        if os.path.isfile(os.path.join(d, "recipe.json")):
            with open(os.path.join(d, "recipe.json"), encoding="utf-8") as f:
                recipe = {k: v for k, v in json.load(f)["recipe"].items() if DEFAULT_RECIPE.get(k) != v}
        out.append(
            {
                "dir": d,
                "recipe": recipe,
                "runs": len(preds),
                "minutes": float(np.mean([p["seconds"] for p in preds]) / 60),
                "val": validation_objective(ens),
                "test": validation_objective(as_val),
            }
        )
    return out


def _trial_dir(output_dir: str, recipe: dict) -> str:
    key = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(output_dir, "trials", key)


def qa_search(
    output_dir: str,
    dataset_dir: str | None = None,
    datalist: str | None = None,
    n_trials: int = 12,
    strategy: str = "region",
    seed: int = 0,
    objective: str = "mean",
    base_recipe: dict | None = None,
    space: dict | None = None,
    folds_from: str | None = None,
    folds: int = 5,
    n_val: int = 4,
    sampler_seed: int = 0,
    startup_trials: int = 6,
    command: str = "",
) -> dict:
    """Run (or resume) the search until ``n_trials`` trials are complete; writes ``search.json`` (every trial),
    ``best_recipe.json`` (the best trial's recipe overrides, for ``scripts/qa_cross_validate.py --recipe``) and
    ``trials.csv`` (best first) in ``output_dir``.

    Args:
        output_dir: the search's folder: ``optuna.db`` (the study), ``mlruns.db`` (every trial a parent run),
            ``folds.json``, ``cache/`` (LA regions), ``trials/<key>/`` (each trial's cross-validation).
        dataset_dir, datalist: the data, as for the QA cross-validation.
        n_trials: complete trials wanted (the default recipe is the first).
        strategy: ``region`` or ``artifact``.
        seed: the training seed of every trial.
        objective: :func:`validation_objective`'s.
        base_recipe: overrides of the default recipe that every trial starts from.
        space: the search space (default :data:`SEARCH_SPACE`).
        folds_from: a cross-validation's ``folds.json`` to reuse (the same folds as Table 2).
        folds, n_val: the folds drawn where there is no ``folds.json``.
        sampler_seed, startup_trials: the TPE sampler's seed and random start.
        command: the command line, recorded.

    Returns:
        ``{"best": {"recipe": ..., "value": ..., "scores": ...}, "trials": [...]}``.

    Raises:
        ValueError: for an unknown strategy, objective or a search-space key that is not a recipe key.
    """
    import optuna

    from bundle.evaluation.qa_crossval import DEFAULT_RECIPE, load_predictions, qa_cross_validate

    if strategy not in ("region", "artifact"):
        raise ValueError(f"search strategy must be region or artifact, got {strategy!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
    space = dict(space or SEARCH_SPACE)
    bad = set(space) - set(DEFAULT_RECIPE)
    if bad:
        raise ValueError(f"search space keys {sorted(bad)} are not recipe keys; known: {sorted(DEFAULT_RECIPE)}")
    base = {**DEFAULT_RECIPE, **(base_recipe or {})}
    os.makedirs(output_dir, exist_ok=True)
    folds_file = os.path.join(output_dir, "folds.json")
    if folds_from and not os.path.isfile(folds_file):
        shutil.copyfile(folds_from, folds_file)
    tracking_uri = f"sqlite:///{os.path.abspath(os.path.join(output_dir, 'mlruns.db'))}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="qa_search",
        storage=f"sqlite:///{os.path.abspath(os.path.join(output_dir, 'optuna.db'))}",
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=startup_trials),
        load_if_exists=True,
    )
    states = optuna.trial.TrialState
    if not study.trials:
        study.enqueue_trial({k: base[k] for k in space})  # the default recipe first
    for t in study.trials:  # interrupted trials: enqueued again, resumed from their finished folds
        if t.state == states.RUNNING:
            study.tell(t.number, state=states.FAIL)
            study.enqueue_trial(t.params)

    def run_trial(trial) -> float:
        recipe = {**base, **suggest_recipe(trial, space)}
        folder = _trial_dir(output_dir, recipe)
        t0 = time.time()
        qa_cross_validate(
            folder,
            dataset_dir,
            datalist,
            strategies=(strategy,),
            seeds=(seed,),
            folds=folds,
            n_val=n_val,
            recipe=recipe,
            cache_dir=os.path.join(output_dir, "cache"),
            tracking_uri=tracking_uri,
            folds_from=folds_file if os.path.isfile(folds_file) else None,
            name=f"qa_search_trial{trial.number}",
            command=command,
        )
        scores = validation_objective(load_predictions(folder, strategy), objective)
        with open(os.path.join(folder, "mlflow_parent.json"), encoding="utf-8") as f:
            parent = json.load(f)["parent_run_id"]
        import mlflow

        client = mlflow.MlflowClient(tracking_uri)
        for k, v in scores.items():
            client.log_metric(parent, f"search.val.{k}", float(v))
        client.set_tag(parent, "search.trial", str(trial.number))
        trial.set_user_attr("folder", os.path.relpath(folder, output_dir))
        trial.set_user_attr("scores", scores)
        trial.set_user_attr("minutes", (time.time() - t0) / 60)
        logger.info(
            f"QA search trial {trial.number}: objective {scores['objective']:.4f} ({recipe_summary(recipe, space)})"
        )
        return scores["objective"]

    done = sum(t.state == states.COMPLETE for t in study.trials)
    if done < n_trials:
        study.optimize(run_trial, n_trials=n_trials - done)
    complete = [t for t in study.trials if t.state == states.COMPLETE]
    best = study.best_trial
    result = {
        "best": {
            "number": best.number,
            "recipe": {**(base_recipe or {}), **best.params},
            "value": best.value,
            "scores": best.user_attrs.get("scores", {}),
        },
        "objective": objective,
        "strategy": strategy,
        "seed": seed,
        "command": command,
        "trials": [{"number": t.number, "value": t.value, "params": t.params, **t.user_attrs} for t in complete],
    }
    with open(os.path.join(output_dir, "search.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(output_dir, "best_recipe.json"), "w", encoding="utf-8") as f:
        json.dump(result["best"]["recipe"], f, indent=1)
    _write_trials_csv(os.path.join(output_dir, "trials.csv"), result["trials"], space)
    return result


def recipe_summary(recipe: dict, space: dict) -> str:
    """``name=value`` of the searched keys of ``recipe``, for logs and tables."""
    return ", ".join(f"{k}={recipe[k]:.3g}" if isinstance(recipe[k], float) else f"{k}={recipe[k]}" for k in space)


def _write_trials_csv(path: str, trials: list[dict], space: dict) -> None:
    import csv

    from bundle.data.datalist import SCORE_KEYS

    cols = ["number", "value", *space, "minutes"]
    cols += [f"{label}.{m}" for label in SCORE_KEYS for m in ("balanced_accuracy", "auroc")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for t in sorted(trials, key=lambda t: -(t["value"] or 0)):
            row = {"number": t["number"], "value": t["value"], "minutes": t.get("minutes"), **t["params"]}
            row.update({k: v for k, v in t.get("scores", {}).items() if k in cols})
            w.writerow(row)
