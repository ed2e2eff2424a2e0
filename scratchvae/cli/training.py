"""``scratchvae train``: a new run from its flags (each setting's flag into its configuration's
field, the configurations' rules refusing what does not apply), a run continued with --resume
(every setting kept), a run replaced with --overwrite, and a run interrupted by a signal.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

from ..errors import ScratchVAEError
from .parser import EXIT_INTERRUPTED, _flag_name
from .render import Progress
from .verbs import (_backend_name, _check_batch_size, _command, _dataset_name, _load_data, _refuse, _refuse_data_dir,
                    _run_data, _timestamped)


class _StopFlag:
    """SIGINT/SIGTERM set a flag that fit polls; the checkpoint write itself is atomic."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = self.signum or signum

    def __call__(self):
        return self.signum is not None

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _refuse_differences(a, run):
    """--resume: refuse every flag given with a value other than the run's, naming each (one's own
    data may have moved: --dataset is checked against the run's fingerprint instead). The
    comparison is of settings: each flag's value read as its field reads it (400 is [400])."""
    from ..data import DATASETS
    from ..errors import InputError

    diffs = []
    moves = {"dataset"} if run.train_config.dataset not in DATASETS else set()
    for cfg in (run.model.settings, run.train_config):
        for f in fields(cfg):
            name, kind = f.name, f.metadata["kind"]
            if name not in a.given or f.metadata["resumable"] or name in moves:
                continue
            given = _dataset_name(a.dataset) if name == "dataset" else kind.normalize(getattr(a, name))
            if kind.show(given) != kind.show(getattr(cfg, name)):     # as the flags say them: unset is
                diffs.append(f"{_flag_name(name)} {kind.show(given) or repr('')} (the run has "   # 'constant'
                             f"{kind.show(getattr(cfg, name)) or repr('')})")
    if "out" in a.given and Path(a.out).resolve() != Path(a.resume).resolve():
        diffs.append(f"--out {a.out} (the run is in {a.resume})")
    if diffs:
        raise InputError(f"--resume {a.resume}: {'; '.join(diffs)}: a resumed run keeps its settings "
                         f"(start a new run to change them; --epochs, --backend, --no-graph, --quiet, "
                         f"--keep and --data-dir may change, and --dataset for one's own data that moved)")


def _train_target(out, overwrite):
    """The folder to train into for --out ``out`` (``out``, or ``<out>.new`` to replace a run
    there with --overwrite), after checks that only read."""
    from ..errors import InputError
    from ..runs import CONFIG, check_run_dir, replacement_dir

    into = out
    if out.is_dir() and any(out.iterdir()):
        if not (out / CONFIG).exists():
            raise InputError(f"--out {out} exists, is not empty and holds no run; choose another folder"
                             + (" (--overwrite replaces runs only)" if overwrite else ""))
        if not overwrite:
            raise InputError(f"--out {out} already holds a run: pass --resume {out} to continue it "
                             f"or --overwrite to replace it")
        into = replacement_dir(out)
        if into.exists():
            raise InputError(f"--overwrite: {into} already holds a new run for {out}; continue it with "
                             f"--resume {into} (it replaces {out} when it completes) or remove it")
    check_run_dir(into, what="--out")
    return into

# -- commands -------------------------------------------------------------------------------

def cmd_train(a):
    if a.resume:
        _refuse(a, [("preset", True, "--preset does not apply to --resume (a resumed run keeps its own settings)")])
        return _train_resume(a)
    if a.preset:
        _apply_preset(a)
    return _train_new(a)


def _apply_preset(a):
    """Set the flags of --preset that the command line did not give."""
    from ..config import PRESETS

    a.from_preset = {dest for dest in PRESETS[a.preset] if dest not in a.given}
    for dest in a.from_preset:
        setattr(a, dest, PRESETS[a.preset][dest])
    a.given |= a.from_preset       # so a setting that does not apply is refused, by name


def _train_new(a):
    from ..data.fingerprint import data_record
    from ..model import VAE
    from ..plots import tile_shape
    from ..runs import REPLACES

    with a.comm.together():                  # a check that fails on any rank fails on every rank
        model_cfg, train_cfg = _refuse_train_flags(a)
        out = Path(a.out) if a.out else _timestamped()
        into = _train_target(out, a.overwrite) if a.comm.writer else out     # rank 0 writes the run
        with Progress(a.quiet) as progress:
            train, test = _load_data(a.dataset, a.data_dir, progress.download, test_fraction=a.test_fraction,
                                     seed=a.seed, image_shape=a.image_shape)
        _check_batch_size(a.batch_size, train)
        model = VAE(model_cfg.replace(input_dim=train.images.shape[1]), backend=a.backend)
    cfg = train_cfg.replace(dataset=_dataset_name(a.dataset), test_fraction=test.held_out)
    info = {"data_dir": str(Path(a.data_dir).resolve()) if a.data_dir else None, "command": _command(a),
            "data": data_record(train, test)}
    if into != out:
        info[REPLACES] = out.name
    ranks = f" on {a.comm.size} ranks" if a.comm.size > 1 else ""
    print(f"training {model}{ranks} on {a.dataset} ({train.images.shape[0]} train, {test.images.shape[0]} test) -> "
          + (f"{into}, to replace {out} once complete" if into != out else f"{out}"), flush=True)
    from ..train import fit

    status = _train(a, into, out if into != out else None, fit, model, train.images, test.images,
                    config=cfg, run_dir=into, keep=a.keep, run_info=info)
    if tile_shape(train.images.shape[1], train.image_shape) is None:      # said once the run is there
        print(f"scratchvae: note: the data are vectors of {train.images.shape[1]} values with no image shape: the "
              f"figures that draw images (plot, sample, decode, compare) need --image-shape H,W[,C]", file=sys.stderr)
    return status


def _refuse_train_flags(a):
    """The new run's (ModelConfig, TrainConfig) from its flags, after refusing, each by name, the
    flags given where their setting does not apply (each field's rule, asked of the flags' values
    and written with the flags' names; a flag --preset set says so) and the flags that are no
    setting where they do not apply (--no-graph on NumPy, --data-dir with data that are no IDX
    files, a reduced --precision without a GPU)."""
    from ..config import ModelConfig, SettingError, TrainConfig

    model, train = ({f.name: getattr(a, f.name) for f in fields(cls) if f.metadata["flag"]}
                    for cls in (ModelConfig, TrainConfig))
    flags = SimpleNamespace(**model)
    why = [(n, ModelConfig.applies_to(n, flags)) for n in model if n in a.given] + \
          [(n, TrainConfig.applies_to(n, SimpleNamespace(**train), flags)) for n in train if n in a.given]
    refused = [(name, True, w.render(_flag_name)) for name, w in why if w is not None]
    configs, together = None, []
    if not refused:
        try:
            configs = ModelConfig(**model)
            configs = configs, TrainConfig(**train).check_model(configs)
        except SettingError as err:           # a rule between settings the flags gave: in the flags' names
            together = [(err.names[0], True, err.render(_flag_name))]
    numpy_why = None          # the model's rule, asked before any data are read (cupy's is the model's own)
    if _backend_name(a.backend) == "numpy":
        from ..backend import get_backend
        from ..model import precision_refusal

        numpy_why = precision_refusal(a.precision, get_backend("numpy"))
    _refuse(a, refused + together + [
        ("precision", numpy_why is not None, f"--precision {a.precision} {numpy_why}"
         + (" (--backend auto found no usable GPU)" if a.backend == "auto" else "")),
        ("no_graph", a.backend == "numpy", "--no-graph applies to --backend cupy or auto; numpy runs each step "
                                           "eagerly anyway")])
    _refuse_data_dir(a, a.dataset)
    if together:
        raise SettingError(together[0][2])
    return configs


def _train(a, folder, replacing, train, *args, **kwargs):
    """Run ``train`` (fit or resume) with ``args`` into ``folder``, render it, report an interrupt
    or a failure, and move a completed run that replaces another (``replacing``) into its place
    (on ranks: rank 0 holds the locks and moves the run)."""
    from ..folders import writing
    from ..runs import finish_replacement
    from ..train import Interrupted

    writes = replacing is not None and a.comm.writer
    with contextlib.ExitStack() as held, Progress(a.quiet) as progress, _StopFlag() as stop:
        with a.comm.together():       # the run to replace has one writer too: this command
            if writes:
                held.enter_context(writing(replacing))
        try:
            train(*args, callback=progress, should_stop=stop, graph=False if a.no_graph else None, comm=a.comm,
                  **kwargs)
        except Interrupted as e:
            return _interrupted(a, e, folder, replacing, progress, stop.signum)
        except ScratchVAEError as e:
            if replacing is None:
                raise
            partial = (f"the partial new run is in {folder} (continue it with: {_resume_command(a, folder)})"
                       if folder.exists() else "no new run was written")
            raise type(e)(f"{e}; the run in {replacing} is untouched, {partial}") from None
        moved = finish_replacement(folder) if a.comm.writer else None
    if moved is not None:
        print(f"the new run replaced the old one in {moved}")
    return 0


def _resume_command(a, run_dir):
    extra = [f for dest, f in (("backend", f"--backend {a.backend}"), ("no_graph", "--no-graph")) if dest in a.given]
    return " ".join([f"scratchvae train --resume {shlex.quote(str(run_dir))}", *extra])


def _interrupted(a, e, run_dir, replacing, progress, signum):
    """Report the checkpoint of an interrupted run and the command that continues it; the exit
    status is 128 + the first signal."""
    progress.say(f"scratchvae: interrupted: {e}; checkpoint {e.checkpoint}", err=True)
    if replacing is not None:
        progress.say(f"the run in {replacing} is untouched; the new run, in {run_dir}, replaces it "
                     f"once it completes", err=True)
    progress.say(f"resume with: {_resume_command(a, run_dir)}", err=True)
    return 128 + int(signum) if signum is not None else EXIT_INTERRUPTED


def _train_resume(a):
    from ..folders import writing

    _refuse(a, [("overwrite", True, "--overwrite does not apply to --resume (a resumed run stays where it is)"),
                ("no_graph", "backend" in a.given and a.backend == "numpy",
                 "--no-graph applies to --backend cupy or auto; numpy runs each step eagerly anyway")])
    with contextlib.ExitStack() as held:
        with a.comm.together():
            if a.comm.writer:
                held.enter_context(writing(a.resume))     # before it is read: what is read is what is continued
            plan = _resume_plan(a)
        if not isinstance(plan, tuple):
            return plan
        return _resume_held(a, *plan)


def _resume_plan(a):
    """The run to continue, its data and the epochs to reach; or the status of a run with nothing
    left to do (a complete run that replaces another is moved into place)."""
    from ..errors import InputError
    from ..runs import REPLACES, finish_replacement, load_run

    run = load_run(a.resume, backend=a.backend if "backend" in a.given else None)
    _refuse_differences(a, run)
    done, batch = run.meta["epoch"], run.meta.get("batch", 0)
    epochs = a.epochs if "epochs" in a.given else run.train_config.epochs
    if epochs < done or (batch and epochs <= done):
        raise InputError(f"--epochs is the total number of epochs: the run has finished {done}"
                         + (f" and is inside epoch {done + 1}" if batch else "") + f", got --epochs {epochs}")
    if epochs <= done:               # finished: whether --epochs names its own total or not, nothing to do
        if run.config.get(REPLACES):     # complete, but killed before it replaced the old run
            if a.comm.writer:
                print(f"the new run replaced the old one in {finish_replacement(a.resume)}")
            return 0
        raise InputError(f"the run in {a.resume} has finished its {done} epochs; "
                         f"pass --epochs N (N > {done}) to train it further")
    with Progress(a.quiet) as progress:
        train, test = _run_data(run, a, progress.download)
    return run, train, test, epochs


def _resume_held(a, run, train, test, epochs):
    from ..runs import REPLACES
    from ..train import resume

    done, batch = run.meta["epoch"], run.meta.get("batch", 0)
    ranks = f" on {a.comm.size} ranks" if a.comm.size > 1 else ""
    print(f"resuming {a.resume} at epoch {done}" + (f", batch {batch}" if batch else "") + f" -> {epochs} epochs"
          + ranks, flush=True)
    replaces = run.config.get(REPLACES)
    return _train(a, Path(a.resume), Path(a.resume).parent / replaces if replaces else None, resume,
                  run, train.images, test.images, epochs=epochs,
                  record={"command": _command(a)},
                  **({"keep": a.keep} if "keep" in a.given else {}))
