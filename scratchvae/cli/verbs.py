"""The command line's verbs that read runs (evaluate, sample, plot, encode, decode) and compare,
with what every verb shares: loading a run's data (checked against its fingerprint), refusing a
flag that does not apply, naming a dataset as a run records it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import shlex
import sys
from pathlib import Path

from .parser import _flag_name
from .render import Progress


def _refuse(a, rules):
    """InputError naming every flag the command line gave where it does not apply.

    rules: (dest, does not apply here, why) triples."""
    from ..errors import InputError

    preset = getattr(a, "from_preset", ())
    why = [text + (f" (--preset {a.preset} sets {_flag_name(dest)})" if dest in preset else "")
           for dest, bad, text in rules if bad and dest in a.given]
    if why:
        raise InputError("; ".join(why))


def _refuse_data_dir(a, dataset):
    _refuse(a, [("data_dir", dataset not in ("mnist", "fashion-mnist"),
                 "--data-dir applies to the datasets read from IDX files (mnist, fashion-mnist), "
                 f"not to {dataset}")])


def _run_data(run, a, progress=None):
    """A run's (train, test): its data, where they were or where --dataset / --data-dir say they
    are now, split and shaped as when it was trained, and checked against its fingerprint."""
    from ..data.fingerprint import check_fingerprint, locate

    tc, recorded = run.train_config, (run.config.get("data") or {}).get("fingerprint")
    dataset, data_dir = locate(tc.dataset, run.config.get("data_dir"), a.dataset if "dataset" in a.given else None,
                               a.data_dir, fingerprinted=recorded is not None)
    train, test = _load_data(dataset, data_dir, progress, test_fraction=tc.test_fraction,
                             seed=run.config["model"].get("seed", 0), image_shape=tc.image_shape)
    check_fingerprint(recorded, train, test, dataset)
    return train, test


def _load_data(dataset, data_dir, progress=None, **own):
    """The dataset, with the data layer's errors speaking of --data-dir. ``own``: test_fraction,
    seed and image_shape, for one's own data."""
    from ..data import load_dataset
    from ..errors import DataError

    try:
        return load_dataset(dataset, data_dir=data_dir, progress=progress, **own)
    except DataError as err:
        text = str(err).replace("data_dir=FOLDER", "--data-dir DIR").replace("data_dir", "--data-dir")
        raise type(err)(text) from None


def _check_batch_size(batch_size, train):
    from ..errors import InputError

    if batch_size > len(train):
        raise InputError(f"--batch-size {batch_size} is larger than the training set ({len(train)} images)")


def _command(a):
    return shlex.join(["scratchvae", *a.argv])


def _timestamped(prefix=""):
    return Path("runs") / f"{prefix}{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _backend_name(name):
    """The backend --backend ``name`` runs on ('auto': cupy where a GPU is usable, else numpy)."""
    from ..backend import cupy_usable

    return ("cupy" if cupy_usable() else "numpy") if name == "auto" else name


def _dataset_name(dataset):
    """What a run records of --dataset: a built-in name, or the absolute path of one's own data."""
    from ..data import DATASETS

    return dataset if dataset in DATASETS else str(Path(dataset).expanduser().resolve())


def _reader_run(a):
    """The run of a verb that reads it, at the checkpoint --epoch or --checkpoint names (default:
    the newest end-of-epoch one)."""
    from ..runs import load_run

    _refuse(a, [("epoch", a.checkpoint is not None,
                 f"--checkpoint names a checkpoint itself; --epoch {a.epoch} does not apply with it")])
    return load_run(a.run_dir, epoch=a.epoch, backend=a.backend, checkpoint=a.checkpoint, finished=True)


def _run_and_data(a, progress=None):
    run = _reader_run(a)
    train, test = _run_data(run, a, progress)
    return run, train, test


def cmd_evaluate(a):
    """The report; on ranks the test −ELBO's batches and the importance sampling's images are
    shared out (the same numbers as one process), and rank 0 prints."""
    from ..evaluate import evaluate_run, format_report

    with Progress(a.quiet) as progress:
        with a.comm.together():
            run, train, test = _run_and_data(a, progress.download)
        res = evaluate_run(run, train, test, ks=a.ks, limit=a.limit, progress=progress.images, comm=a.comm)
    print(json.dumps(res, indent=2) if a.json else format_report(res))
    return 0


def on_rank_zero(verb, command):
    """``command`` for a verb that does not use ranks: under a launcher of several, rank 0 runs
    it alone and says so; the other ranks wait for it."""
    def run(a):
        if a.comm.size == 1:
            return command(a)
        if not a.comm.writer:
            return 0
        print(f"scratchvae: note: {verb} does not use ranks: rank 0 runs it alone ({a.comm.size - 1} "
              f"other rank(s) wait)", file=sys.stderr)
        return command(a)
    return run


def cmd_sample(a):
    from ..plots import sample_figure

    run = _reader_run(a)
    out = Path(a.out or Path(a.run_dir) / "samples.png")
    sample_figure(run.model, n=a.n, seed=a.seed, draw=a.sample_x, path=out, image_shape=_image_shape_of(run, a))
    print(out)
    return 0


def _image_shape_of(run, a):
    """The image shape a run's images are drawn in: --image-shape (checked against the data's width),
    else the one its data were recorded with (None: older runs, flat data, square images)."""
    from ..data.dataset import check_image_shape

    if a.image_shape is not None:
        return check_image_shape(a.image_shape, run.model.input_dim)
    shape = (run.config.get("data") or {}).get("image_shape")
    return tuple(shape) if shape else None


def cmd_encode(a):
    from ..codes import encode_images, write_codes
    from ..inputs import prepare_split

    with Progress(True) as progress:
        run, train, test = _run_and_data(a, progress.download)
    data = test if a.split == "test" else train
    images, labels = data.images[:a.limit], None if data.labels is None else data.labels[:a.limit]
    x = prepare_split(images, run.model, run.train_config.binarize, a.split)   # binarised as in training
    codes = encode_images(run.model, x, labels, sample=a.sample, classes=data.classes)
    out = Path(a.out or Path(a.run_dir) / f"codes-{a.split}.npz")
    write_codes(out, codes, {"run": str(Path(a.run_dir).resolve()), **run.position,
                             "split": a.split, "posterior": run.model.posterior.name, "sampled": a.sample,
                             **({} if run.model.chain is None else {"layers": len(run.model.chain.latents),
                                                                    "passed_up": "draws" if a.sample else "means"})})
    shapes = ", ".join(f"{k} {v.shape}" for k, v in codes.items())
    print(f"{out}: {shapes}")
    return 0


def cmd_decode(a):
    from ..codes import decode_codes, read_codes
    from ..plots import _tile, grid_figure

    out = Path(a.out or Path(a.run_dir) / "decoded.png")
    figure = out.suffix.lower() != ".npz"
    _refuse(a, [("image_shape", not figure, f"--image-shape draws a figure; --out {out} holds the pixels")])
    run = _reader_run(a)
    shape = _tile(run.model, image_shape=_image_shape_of(run, a)) if figure else None
    layers = 1 if run.model.chain is None else len(run.model.chain.latents)
    if a.layer is not None and a.layer > layers:
        from ..errors import InputError

        raise InputError(f"--layer: expected a stochastic layer of the run's model, 1 to {layers}, got {a.layer}")
    pixels, which = decode_codes(run.model, read_codes(a.codes), layer=a.layer)
    if figure:
        grid_figure(pixels, shape, out, f"decoder means of {len(pixels)} codes ({which}) — {Path(a.codes).name}")
    else:
        from ..codes import write_codes

        write_codes(out, {"x": pixels}, {"decoded": which, "codes": str(a.codes)})
    print(f"decoded {which} of {len(pixels)} codes -> {out}")
    return 0


def cmd_plot(a):
    from ..plots import figure_plan, plot_run
    from ..folders import writing

    out = Path(a.out or Path(a.run_dir) / "figures")
    inside = out.resolve().is_relative_to(Path(a.run_dir).resolve())
    with writing(a.run_dir) if inside else contextlib.nullcontext():      # figures written into the run
        run, train, test = _run_and_data(a)
        shape = _image_shape_of(run, a) if a.image_shape else None        # else the data's own
        drawn = plot_run(run, train, test, out_dir=out, n=a.n, seed=a.seed, draw=a.sample_x, fmt=a.format,
                         image_shape=shape)
    print("\n".join(map(str, drawn)))
    for kind, why in figure_plan(run, train, test, shape).items():
        if why:
            print(f"scratchvae: note: skipped {kind}.{a.format}: {why}", file=sys.stderr)
    return 0


def cmd_compare(a):
    from ..compare import compare_models
    from ..data.fingerprint import data_record
    from ..errors import InputError
    from ..plots import image_tile
    from ..folders import staged_dir
    from ..runs import check_run_dir

    _refuse_data_dir(a, a.dataset)
    if any(isinstance(h, (tuple, list)) for h in a.hidden):
        raise InputError("--hidden: the comparison's models have one stochastic layer (a 2-D latent; an AE and a "
                         "KL-only model have no chain of layers): expected one group of sizes like 400 or 512,256, "
                         f"got {'/'.join(','.join(map(str, h)) for h in a.hidden)}")
    out = Path(a.out) if a.out else _timestamped("compare-")
    replacing = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if replacing and not (out / "compare.json").is_file():
        raise InputError(f"--out {out} exists, is not empty and holds no comparison; choose another folder"
                         + (" (--overwrite replaces comparisons only)" if a.overwrite else ""))
    if replacing and not a.overwrite:
        raise InputError(f"--out {out} already holds a comparison: pass --overwrite to replace it, or choose "
                         f"another folder")
    check_run_dir(out.with_name(f".{out.name}.new") if replacing else out, what="--out")   # replacing: its folder
    with Progress(a.quiet) as progress, _held_runs(out if replacing else None):
        train, test = _load_data(a.dataset, a.data_dir, progress.download, seed=a.seed, image_shape=a.image_shape)
        _check_batch_size(a.batch_size, train)
        image_tile(train.images.shape[1], train.image_shape)      # the figures draw images: a shape, before training
        with staged_dir(out, replace=replacing) as folder:
            res = compare_models(train, test, epochs=a.epochs, batch_size=a.batch_size, hidden=a.hidden, lr=a.lr,
                                 seed=a.seed, backend=a.backend, out=folder / "compare.png", run_dir=folder,
                                 callback=progress, run_info={"command": _command(a), "data": data_record(train, test)})
    for name, acc in res["probe_accuracy"].items():
        print(f"{name:8s} linear-probe accuracy {acc:.3f}  (run: {out / name})")
    print(out / "compare.png")
    print(out / Path(res["posterior_figure"]).name)
    return 0


@contextlib.contextmanager
def _held_runs(folder):
    """The writer locks of the runs in a comparison ``folder`` that is to be replaced (None:
    nothing held), held while the new one is made: no other process writes them meanwhile."""
    from ..compare import COMPARE_MODELS
    from ..folders import writing

    with contextlib.ExitStack() as held:
        for name, _ in COMPARE_MODELS if folder is not None else ():
            if (folder / name).is_dir():
                held.enter_context(writing(folder / name))
        yield
