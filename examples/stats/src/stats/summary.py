from .moments import mean, variance


def handler(context, values, label="sample"):
    if not values:
        raise ValueError("values is empty: nothing to summarise")
    print(f"{label}: {len(values)} values")
    m, v = mean(values), variance(values)
    context.log_metric("mean", m)
    context.log_metric("variance", v)
    return {"label": label, "n": len(values), "mean": m, "variance": v, "min": min(values), "max": max(values)}
