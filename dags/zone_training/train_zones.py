"""Per-zone training: one small ridge-regression model per geographic zone, one Ray task per zone.

Each zone gets its own synthetic demand data (features such as temperature, hour-of-day and price,
with a zone-specific true relationship), picks its ridge penalty by k-fold cross-validation, and
writes its model and metrics under ``<output_dir>/zones/<zone>/``. The driver collects every zone's
metrics into ``summary.json``. Run it as a Ray job (``python train_zones.py --zones 200 --output-dir D``)
or import :func:`fit_zone` to run the same work without Ray (the benchmark's serial baseline).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

LAMBDAS = np.logspace(-3, 2, 12)


def zone_data(zone: int, samples: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, zone])
    x = rng.normal(size=(samples, features))
    true_weights = rng.normal(scale=2.0, size=features)
    noise = rng.normal(scale=0.5 + zone % 7 / 7, size=samples)
    return x, x @ true_weights + 3.0 + noise


def ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, float]:
    x_mean, y_mean = x.mean(axis=0), y.mean()
    xc = x - x_mean
    weights = np.linalg.solve(xc.T @ xc + penalty * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    return weights, float(y_mean - x_mean @ weights)


def fit_zone(
    zone: int,
    samples: int = 2000,
    features: int = 24,
    folds: int = 5,
    seed: int = 7,
    output_dir: str | None = None,
) -> dict:
    """Train one zone's model: choose the penalty by k-fold CV, refit, score on a held-out 20 %."""
    started = time.perf_counter()
    x, y = zone_data(zone, samples, features, seed)
    cut = int(samples * 0.8)
    x_train, y_train, x_test, y_test = x[:cut], y[:cut], x[cut:], y[cut:]
    fold_of = np.arange(cut) % folds
    cv_errors = []
    for penalty in LAMBDAS:
        error = 0.0
        for fold in range(folds):
            train, held = fold_of != fold, fold_of == fold
            weights, bias = ridge(x_train[train], y_train[train], penalty)
            error += float(np.mean((x_train[held] @ weights + bias - y_train[held]) ** 2))
        cv_errors.append(error / folds)
    best = float(LAMBDAS[int(np.argmin(cv_errors))])
    weights, bias = ridge(x_train, y_train, best)
    residual = x_test @ weights + bias - y_test
    rmse = float(np.sqrt(np.mean(residual**2)))
    r2 = float(1 - np.sum(residual**2) / np.sum((y_test - y_test.mean()) ** 2))
    metrics = {
        "zone": zone,
        "penalty": best,
        "rmse": rmse,
        "r2": r2,
        "train_rows": cut,
        "test_rows": samples - cut,
        "seconds": time.perf_counter() - started,
    }
    if output_dir:
        zone_dir = Path(output_dir) / "zones" / f"zone-{zone:05d}"
        zone_dir.mkdir(parents=True, exist_ok=True)
        np.savez(zone_dir / "model.npz", weights=weights, bias=bias, penalty=best)
        (zone_dir / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zones", type=int, default=200)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--features", type=int, default=24)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cpus-per-zone", type=float, default=0.5)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args()

    import ray

    ray.init()
    started = time.perf_counter()
    train = ray.remote(num_cpus=args.cpus_per_zone, max_retries=2)(fit_zone)
    pending = [
        train.remote(zone, args.samples, args.features, args.folds, 7, args.output_dir) for zone in range(args.zones)
    ]
    results, done = [], 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=min(len(pending), max(1, args.zones // 10)))
        results.extend(ray.get(ready))
        done += len(ready)
        print(f"trained {done}/{args.zones} zones", flush=True)
    elapsed = time.perf_counter() - started
    summary = {
        "zones": len(results),
        "mean_rmse": float(np.mean([r["rmse"] for r in results])),
        "mean_r2": float(np.mean([r["r2"] for r in results])),
        "task_seconds": float(sum(r["seconds"] for r in results)),
        "wall_seconds": elapsed,
    }
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
