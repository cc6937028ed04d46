"""Reference (c): the grid logged to MLflow the way a typical user writes it.

One `mlflow.start_run` per cell, `mlflow.log_metric` at every step, and `mlflow.pytorch.log_model` with its
defaults (the pt2 format, which needs an input example, and inferred requirements). Same training as
tinytrain (tinytrain.engines.sequential), same store kind (SQLite); only the tracking differs.

Usage: python benchmarks/naive_mlflow.py TRACKING_URI [EXPERIMENT.toml]
"""

import sys
import time

started = time.perf_counter()

import mlflow  # noqa: E402
import mlflow.pytorch  # noqa: E402
import torch  # noqa: E402

from tinytrain.engines.sequential import configure_runtime  # noqa: E402
from tinytrain.model import LeNet  # noqa: E402
from tinytrain.optimizers import build_optimizer  # noqa: E402
from tinytrain.problems.one_sample import loss_fn, make_input, make_target  # noqa: E402
from tinytrain.spec import default_experiment_path, load_experiment  # noqa: E402


def main() -> None:
    uri = sys.argv[1]
    experiment = load_experiment(sys.argv[2] if len(sys.argv) > 2 else default_experiment_path())
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment.name)
    for spec in experiment.specs():
        configure_runtime(spec.threads, spec.mkldnn)
        x, target = make_input(spec.data_seed), make_target(spec.target_index)
        with mlflow.start_run(run_name=spec.run_name):
            mlflow.log_params(spec.params())
            torch.manual_seed(spec.seed)
            net = LeNet()
            optimizer = build_optimizer(spec.kind, net.parameters(), spec.lr, spec.optimizer_kwargs)
            for step in range(spec.steps):
                optimizer.zero_grad()
                loss = loss_fn(net(x), target)
                mlflow.log_metric("loss", loss.item(), step=step)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                final = loss_fn(net(x), target).item()
            mlflow.log_metric("loss", final, step=spec.steps)
            mlflow.log_metric("final_loss", final, step=spec.steps)
            mlflow.pytorch.log_model(net, name="model", input_example=x.numpy())
    print(f"wall_seconds={time.perf_counter() - started:.4f}")


if __name__ == "__main__":
    main()
