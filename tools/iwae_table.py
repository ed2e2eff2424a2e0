"""The IWAE paper's MNIST table from runs of ``scratchvae train --preset iwae-paper`` (one
stochastic layer) and ``--preset iwae-paper-2`` (two).

Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016), Table 1: test
NLL = −log p(x) by importance sampling with K = 5000 samples.

    python tools/iwae_table.py RUN[@EPOCH] [RUN[@EPOCH] ...] [--data-dir DIR] [--results DIR]
                               [--curve-limit N] [--plot FILE]

For each run: its newest checkpoint (or the one of epoch EPOCH: ``runs/vae-s1@364``, a row for
a run continued past it; RUN may hold wildcards, quoted: ``'runs/vae-s?@364'``) on all test
images (the table), then the last epoch of each stage of the schedule (1, 4, 13, 40, 121, …
passes) on the first --curve-limit test images (the curve; train with ``--keep all`` to keep
them; ``--curve-limit 0`` skips it). Each run's results are kept in ``<results>/<run
name>.json``, so a rerun evaluates only what is new and separate runs can be evaluated by
separate processes. Prints a Markdown table: model, passes, NLL ± SE per seed, their mean, and
the published figure; ``--plot`` draws the test −ELBO and NLL against passes.
"""
import argparse
import glob
import json
import math
from pathlib import Path

from scratchvae.data import load_dataset
from scratchvae.errors import ScratchVAEError
from scratchvae.evaluate import evaluate_run
from scratchvae.history import read_history
from scratchvae.runs import load_run
from scratchvae.optim import iwae_stage

K = 5000
PUBLISHED = {"VAE": 86.76, "IWAE k=5": 85.54, "IWAE k=50": 84.78,
             "VAE, two layers": 85.33, "IWAE k=5, two layers": 83.89, "IWAE k=50, two layers": 82.90}
"""Table 1 of the paper, MNIST (test NLL, nats): one stochastic layer, and two (100 and 50 units);
the VAE's row is its k = 1 (the ELBO)."""


def model_name(config):
    m = config["model"]
    layers = len(m["latent"]) if isinstance(m.get("latent"), list) else 1
    suffix = "" if layers == 1 else ", two layers" if layers == 2 else f", {layers} layers"
    if m.get("objective") == "iwae":
        return f"IWAE k={m.get('iw_samples', 5)}{suffix}"
    if m.get("posterior") != "full":
        return "VAE" + suffix
    c = m["offdiag_scale"]                # load_run reads runs that predate it as 1
    return "VAE, full covariance" if math.isclose(c, 1 / math.sqrt(m["latent"])) else f"VAE, full covariance, c = {c:g}"


def stage_ends(last):
    """The epochs that end a stage of the schedule, up to ``last``, and ``last`` itself."""
    ends = [e for e in range(1, last + 1) if iwae_stage(e + 1) > iwae_stage(e)]
    return sorted(set(ends) | {last})


def evaluate(run_dir, epoch, limit, data_dir):
    run = load_run(run_dir, epoch=epoch)
    train, test = load_dataset(run.train_config.dataset, data_dir=data_dir)
    res = evaluate_run(run, train, test, ks=(K,), limit=limit)
    est = res["log_px"][K]
    au = res["active_units"]
    out = {"epoch": res["epoch"], "n_test": res["n_test"], "nll": -est["mean"], "se": est["se"],
           "test_elbo": res["test_elbo"]["loss"], "active_units": au["count"]}
    if "layers" in au:                     # several stochastic layers: each one's count and KL part
        out.update(active_units=[a["count"] for a in au["layers"]], active_samples=au["samples"],
                   test_kl_layers=res["test_elbo"]["kl_layers"])
    return out


def split_epoch(arg):
    """'RUN@EPOCH' -> (Path(RUN), EPOCH); any other argument -> (Path(arg), None)."""
    head, at, tail = str(arg).rpartition("@")
    return (Path(head), int(tail)) if at and tail.isdigit() else (Path(arg), None)


def expand(args_runs):
    """The runs named: each RUN[@EPOCH] with RUN's wildcards expanded here (the shell leaves
    ``runs/vae-s?@364`` alone, since no file is called that), in sorted order."""
    runs = []
    for arg in args_runs:
        head, epoch = split_epoch(arg)
        if not glob.has_magic(str(head)):
            runs.append(arg)
            continue
        found = sorted(glob.glob(str(head)))
        if not found:
            raise SystemExit(f"iwae_table: no run matches {head}")
        runs += [f"{h}@{epoch}" if epoch is not None else h for h in found]
    return runs


def results_for(arg, args):
    """The evaluations of run ``arg`` (RUN or RUN@EPOCH), read from the run's results file and
    completed there (one file per run, whichever epochs are asked for: evaluate the epochs of
    one run in one process)."""
    run_dir, epoch = split_epoch(arg)
    path = Path(args.results) / f"{run_dir.name}.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    run = load_run(run_dir, epoch=epoch)
    last = run.meta["epoch"]
    curve = [(e, args.curve_limit) for e in stage_ends(last)] if args.curve_limit else []
    wanted = [(last, None)] + curve
    for epoch, limit in wanted:
        key = f"{epoch}/{limit or 'all'}"
        if key not in done:
            print(f"{run_dir.name}: epoch {epoch}, {limit or 'all'} test images, K={K}", flush=True)
            done[key] = evaluate(run_dir, epoch, limit, args.data_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(done, indent=1))
    return {"name": run_dir.name, "dir": run_dir, "model": model_name(run.config), "seed": run.config["model"].get("seed"),
            "passes": last, "final": done[f"{last}/all"],
            "curve": sorted((v["epoch"], v["nll"], v["n_test"]) for k, v in done.items()
                            if not k.endswith("/all") and v["epoch"] <= last)}


def table(results):
    lines = ["| model | passes | test NLL per seed (± SE) | mean | published (3280 passes) |",
             "|---|---:|---|---:|---:|"]
    order = ["VAE", "IWAE k=5", "IWAE k=50", "VAE, full covariance", "VAE, full covariance, c = 1",
             "VAE, two layers", "IWAE k=5, two layers", "IWAE k=50, two layers"]
    groups = {}
    for r in results:
        groups.setdefault((r["model"], r["passes"]), []).append(r)
    for (model, passes), rs in sorted(groups.items(), key=lambda g: (order.index(g[0][0])
                                                                      if g[0][0] in order else 99, g[0][1])):
        rs.sort(key=lambda r: r["seed"])
        per_seed = ", ".join(f"seed {r['seed']}: {r['final']['nll']:.2f} ± {r['final']['se']:.2f}" for r in rs)
        mean = sum(r["final"]["nll"] for r in rs) / len(rs)
        pub = PUBLISHED.get(model)
        lines.append(f"| {model} | {passes} | {per_seed} | {mean:.2f} | {pub if pub else '—'} |")
    return "\n".join(lines)


def longest(results):
    """The longest result of each model and seed: the one whose line is drawn (a shorter one is
    the same run cut earlier, a copy continued, or the run at an earlier ``@EPOCH``)."""
    best = {}
    for r in results:
        key = (r["model"], r["seed"])
        if key not in best or r["passes"] > best[key]["passes"]:
            best[key] = r
    return sorted(best.values(), key=lambda r: (r["model"], r["seed"]))


def plot(results, path):
    """Per model and seed: the test loss after every pass of its longest run (the run's metrics,
    all test images: −ELBO, for an IWAE run −L_k; lines), its K = 5000 NLL at the stage ends
    (on the first test images, open markers) and on all test images wherever a row of the table
    was evaluated (filled markers)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    models = sorted({r["model"] for r in results})
    color = {m: f"C{i}" for i, m in enumerate(models)}
    for r in longest(results):
        c, ls = color[r["model"]], "-" if r["seed"] % 2 else "--"
        rows = read_history(r["dir"], upto_epoch=r["passes"])
        ax.plot([row["epoch"] for row in rows], [row["test_loss"] for row in rows], color=c, ls=ls, lw=1,
                label=f"{r['model']}, seed {r['seed']}")
        if r["curve"]:
            epochs, nll, _ = zip(*r["curve"])
            ax.plot(epochs, nll, ls="none", marker="o", mfc="none", ms=4, color=c)
    for r in results:
        ax.plot([r["passes"]], [r["final"]["nll"]], ls="none", marker="o", ms=5, color=color[r["model"]])
    for model in models:
        if model in PUBLISHED:
            ax.axhline(PUBLISHED[model], ls=":", color=color[model], lw=1,
                       label=f"{model}: the paper's NLL {PUBLISHED[model]} (3280 passes)")
    n_curve = sorted({n for r in results for _, _, n in r["curve"]})
    n_all = "/".join(map(str, sorted({r["final"]["n_test"] for r in results})))
    on = f" (open: first {'/'.join(map(str, n_curve))} test images)" if n_curve else ""
    ax.set(xscale="log", xlabel="passes over the training set", ylabel="nats per test image",
           title=f"lines: each run's objective on the test set (−ELBO; IWAE: −L_k);\n"
                 f"dots: test NLL = −log p(x), K={K}{on}; filled: all {n_all} test images")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN[@EPOCH]", help="a run folder, or one at epoch EPOCH's checkpoint")
    p.add_argument("--data-dir", metavar="DIR", help="where the MNIST IDX files are (default: the download cache)")
    p.add_argument("--results", default="iwae-results", metavar="DIR", help="where each run's evaluations are kept")
    p.add_argument("--curve-limit", type=int, default=1000, metavar="N", help="test images per point of the curve (0: no curve)")
    p.add_argument("--plot", metavar="FILE", help="draw the test −ELBO and NLL against passes into FILE")
    args = p.parse_args(argv)
    try:
        results = [results_for(r, args) for r in expand(args.runs)]
    except ScratchVAEError as e:              # a run that is not there, an epoch it never saved
        raise SystemExit(f"iwae_table: {e}") from None
    print(table(results))
    if args.plot:
        plot(results, args.plot)
        print(args.plot)


if __name__ == "__main__":
    main()
