"""`make tune`'s sweep against the two tutorials a newcomer starts from, at equal wall clock.

Usage: python benchmarks/peers.py [--budgets 300,600] [--repeats 1]
                                  [--experiment experiments/mnist_quick.yaml]

Three contestants, one after another, each in a fresh Python process, for each budget:

- tunelab: `tunelab tune EXPERIMENT --timeout BUDGET` as a user types it, into fresh stores in a
  temporary folder. Its wall clock includes its start (imports, data, the precision measurement);
  its best is the best finished trial's validation accuracy.
- KerasTuner's getting-started example (keras.io/guides/keras_tuner/getting_started): its MLP on
  flattened MNIST (1-3 dense layers of 32-512 units, relu or tanh, optional dropout 0.25, Adam at
  1e-4..1e-2), RandomSearch, 2 epochs, 2 executions a trial, with as many trials as the budget
  allows instead of the guide's 3.
- Optuna's Keras example (optuna-examples keras/keras_simple.py): its MLP (1-3 dense layers of 4-128
  units, dropout 0.2-0.5 after each, RMSprop at 1e-5..1e-1), TPE, 10 epochs of batch 128, with
  `timeout=BUDGET`. The example trains on 3,000 images and validates on 1,000; here it gets all
  50,000 training images and the 10,000 validation images (a stronger peer, and the same split).

All three see the same cached MNIST and the same split (the last 10,000 training images validate:
`tunelab.define.data.load_splits`). The tutorials' clocks start after their imports and data; a
tutorial trial that ends after the budget does not count (training stops at the deadline), as a
tunelab trial paused at its deadline does not. Prints best validation accuracy, finished trials
and wall seconds per contestant and budget, and each tutorial's gap to tunelab in points.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONTESTANTS = ("tunelab", "kerastuner-tutorial", "optuna-example")


def _splits() -> Any:
    from tunelab.define.data import load_splits

    return load_splits("mnist")


def best_complete(study: Any) -> dict[str, Any]:
    """The best value among a study's complete trials, and how many there are."""
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    values = [t.value for t in done if t.value is not None]
    return {"best": max(values, default=0.0), "trials": len(done)}


def _deadline_callback(deadline: float, on_deadline: Any = None) -> Any:
    import keras

    class StopAtDeadline(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if time.monotonic() >= deadline:
                self.model.stop_training = True
                if on_deadline is not None:
                    on_deadline()

    return StopAtDeadline()


def run_kerastuner_tutorial(budget: float, folder: Path) -> dict[str, Any]:
    """KerasTuner's getting-started search, cut at `budget` seconds."""
    import keras
    import keras_tuner
    from keras import layers

    splits = _splits()
    x_train, x_val = (s.x.astype("float32") / 255.0 for s in (splits.train, splits.val))
    y_train, y_val = (keras.utils.to_categorical(s.y, 10) for s in (splits.train, splits.val))

    def build_model(hp: Any) -> Any:
        model = keras.Sequential()
        model.add(layers.Flatten())
        for i in range(hp.Int("num_layers", 1, 3)):
            model.add(
                layers.Dense(
                    units=hp.Int(f"units_{i}", min_value=32, max_value=512, step=32),
                    activation=hp.Choice("activation", ["relu", "tanh"]),
                )
            )
        if hp.Boolean("dropout"):
            model.add(layers.Dropout(rate=0.25))
        model.add(layers.Dense(10, activation="softmax"))
        learning_rate = hp.Float("lr", min_value=1e-4, max_value=1e-2, sampling="log")
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    started = time.monotonic()
    deadline = started + budget
    finished: list[float] = []

    class TimedRandomSearch(keras_tuner.RandomSearch):  # type: ignore[misc]
        def _configure_tensorboard_dir(self, *args: Any, **kwargs: Any) -> None:
            """No TensorBoard callback here; KerasTuner would import tensorboard regardless."""

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            if time.monotonic() <= deadline and trial.score is not None:
                finished.append(float(trial.score))

    tuner = TimedRandomSearch(
        hypermodel=build_model,
        objective="val_accuracy",
        max_trials=100_000,
        executions_per_trial=2,
        overwrite=True,
        directory=str(folder),
        project_name="helloworld",
    )

    def stop_searching() -> None:
        tuner.oracle.max_trials = len(tuner.oracle.trials)

    tuner.search(
        x_train,
        y_train,
        epochs=2,
        validation_data=(x_val, y_val),
        callbacks=[_deadline_callback(deadline, stop_searching)],
        verbose=0,
    )
    return {"best": max(finished, default=0.0), "trials": len(finished)}


def run_optuna_example(budget: float, folder: Path) -> dict[str, Any]:
    """Optuna's Keras example on the full split, `study.optimize(timeout=budget)`."""
    import keras
    import optuna
    from keras.layers import Dense, Dropout

    splits = _splits()
    x_train, x_val = (
        s.x.reshape(len(s.x), -1).astype("float32") / 255.0 for s in (splits.train, splits.val)
    )
    y_train, y_val = splits.train.y, splits.val.y
    started = time.monotonic()
    deadline = started + budget

    def create_model(trial: optuna.Trial) -> Any:
        model = keras.Sequential([keras.Input((784,))])
        for i in range(trial.suggest_int("n_layers", 1, 3)):
            model.add(
                Dense(trial.suggest_int(f"n_units_l{i}", 4, 128, log=True), activation="relu")
            )
            model.add(Dropout(rate=trial.suggest_float(f"dropout_l{i}", 0.2, 0.5)))
        model.add(Dense(10, activation="softmax"))
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        model.compile(
            loss="sparse_categorical_crossentropy",
            optimizer=keras.optimizers.RMSprop(learning_rate=lr),
            metrics=["accuracy"],
        )
        return model

    def objective(trial: optuna.Trial) -> float:
        keras.backend.clear_session()
        model = create_model(trial)
        model.fit(
            x_train,
            y_train,
            batch_size=128,
            epochs=10,
            verbose=0,
            callbacks=[_deadline_callback(deadline)],
        )
        if time.monotonic() > deadline:
            raise optuna.TrialPruned("the budget ran out during this trial")
        return float(model.evaluate(x_val, y_val, verbose=0)[1])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, timeout=budget)
    return best_complete(study)


def run_tunelab(budget: float, folder: Path, experiment: Path) -> dict[str, Any]:
    """`tunelab tune EXPERIMENT --timeout BUDGET` in `folder` (its own fresh stores)."""
    import optuna

    tunelab = Path(sys.executable).parent / "tunelab"
    subprocess.run(
        [str(tunelab), "tune", str(experiment.resolve()), "--timeout", f"{budget:g}s"],
        cwd=folder,
        check=True,
        stdout=subprocess.DEVNULL,
        env={
            k: v
            for k, v in os.environ.items()
            if k not in ("MLFLOW_TRACKING_URI", "TUNELAB_OPTUNA_STORAGE")
        },
    )
    storage = f"sqlite:///{folder / 'tracking' / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return best_complete(study)


def contest(name: str, budget: float, experiment: Path) -> dict[str, Any]:
    """One contestant in a fresh process; its result and the wall seconds of that process."""
    with tempfile.TemporaryDirectory(prefix=f"peers-{name}-") as folder:
        started = time.monotonic()
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                name,
                "--budget",
                str(budget),
                "--folder",
                folder,
                "--experiment",
                str(experiment),
            ],
            capture_output=True,
            text=True,
        )
        if child.returncode != 0:
            raise SystemExit(f"{name} failed ({child.returncode}): {child.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
        return {**result, "wall": time.monotonic() - started}


def one(name: str, budget: float, folder: Path, experiment: Path) -> dict[str, Any]:
    if name == "tunelab":  # the command imports what it needs; its wall clock starts here
        return run_tunelab(budget, folder, experiment)
    from tunelab.quiet import import_tensorflow, quiet_environment

    quiet_environment()
    import_tensorflow()
    if name == "kerastuner-tutorial":
        return run_kerastuner_tutorial(budget, folder)
    return run_optuna_example(budget, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="300,600", help="seconds, comma-separated")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--experiment", type=Path, default=Path("experiments/mnist_quick.yaml"))
    parser.add_argument("--one", choices=CONTESTANTS, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.budget, args.folder, args.experiment)))
        return
    from tunelab.training.precision import cpu_description

    print(f"CPU: {cpu_description()}; {args.experiment}")
    header = f"{'budget':>7} {'repeat':>6}  {'contestant':<20} {'best val_acc':>12}"
    print(f"{header} {'trials':>6} {'wall s':>7}  vs tunelab")
    for budget in (float(b) for b in args.budgets.split(",")):
        for repeat in range(1, args.repeats + 1):
            results = {name: contest(name, budget, args.experiment) for name in CONTESTANTS}
            ours = results["tunelab"]["best"]
            for name, r in results.items():
                gap = "" if name == "tunelab" else f"{(r['best'] - ours) * 100:+.2f} points"
                print(
                    f"{budget:>7.0f} {repeat:>6}  {name:<20} {r['best']:>12.4f} {r['trials']:>6} "
                    f"{r['wall']:>7.0f}  {gap}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
