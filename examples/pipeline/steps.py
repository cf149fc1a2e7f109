"""The steps of the example pipeline: stdlib only, small enough to read at a glance.

prepare → train (one run per learning rate) → pick → deploy (only if the best model is good).
"""
import json
import math
import random


def prepare(n=200, noise=0.1, seed=7):
    """y = 3x + 2 with noise, split into train and test sets."""
    rng = random.Random(seed)
    points = [(x, 3 * x + 2 + rng.gauss(0, noise)) for x in (rng.uniform(-1, 1) for _ in range(n))]
    cut = int(n * 0.8)
    return {"train": points[:cut], "test": points[cut:]}


def train(data, lr, epochs=200):
    """Fits y = w x + b by gradient descent; scores it on the test set."""
    w = b = 0.0
    points = data["train"]
    for _ in range(epochs):
        gw = sum((w * x + b - y) * x for x, y in points) * 2 / len(points)
        gb = sum((w * x + b - y) for x, y in points) * 2 / len(points)
        w, b = w - lr * gw, b - lr * gb
    mse = sum((w * x + b - y) ** 2 for x, y in data["test"]) / len(data["test"])
    if not math.isfinite(mse):
        mse = float("inf")
    print(f"lr={lr}: w={w:.3f} b={b:.3f} test mse={mse:.4f}")
    return {"lr": lr, "w": w, "b": b, "mse": mse if math.isfinite(mse) else 1e30}


def pick(candidates):
    """The candidate with the lowest test error."""
    best = min(candidates, key=lambda c: c["mse"])
    print("best:", json.dumps(best))
    return best


MODEL = {}


def init(context, w=0.0, b=0.0):
    """Once per replica, before it serves: the model the pipeline picked."""
    MODEL["w"], MODEL["b"] = w, b


def predict(request):
    w, b = MODEL["w"], MODEL["b"]
    xs = request.json["x"]
    return {"y": [w * x + b for x in xs]}
