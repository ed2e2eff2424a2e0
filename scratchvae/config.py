"""Settings, defined once: what a model is (:class:`ModelConfig`), how it is trained
(:class:`TrainConfig`), and every rule about them.

Each setting is a field of a frozen dataclass whose metadata (:func:`setting`) holds what the
command line needs to build its flag (the value's :class:`Kind`: how text becomes a value and
what a value must be; the help text; its group) and when the setting applies. ``scratchvae
train``'s flags are made from these fields, so a rule is written here only:

* **values**: each field's kind normalises and checks it (``InputError`` naming the field);
* **what applies**: :meth:`ModelConfig.applies` / :meth:`TrainConfig.applies` say None, or
  why a field has no effect with the rest of the configuration (σ with a Bernoulli likelihood,
  β with a plain autoencoder, …); a configuration refuses a value other than a field's default
  where it does not apply, and the command line refuses a flag the user typed there (even at
  its default), with the same words;
* **between settings**: a reduced precision needs float32; a KL warm-up needs an objective
  with a KL weight (:meth:`TrainConfig.check_model`).

Messages are :class:`SettingError`\\ s, templates over the fields' names: ``str(err)`` names the
fields as Python does (``beta``), the command line renders them as its flags (``--beta``).
"""

from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass, field, fields, replace

from .data import DATASETS
from .data.custom import DEFAULT_TEST_FRACTION
from .errors import InputError
from .inputs import BINARIZE, parse_corrupt
from .likelihoods import LIKELIHOODS, parse_sigma, sigma_text
from .objectives import IW_SAMPLES, MODES, OBJECTIVES, objective_class
from .ops.activations import ACTIVATIONS
from .ops.precision import PRECISIONS
from .optim import LR_SCHEDULES, OPTIMIZERS, Adam
from .posteriors import POSTERIORS

DTYPES = ("float32", "float64")
ADAM_EPS = inspect.signature(Adam).parameters["eps"].default
"""Adam's ε where ``adam_eps`` is not set."""
OUTPUT_BIAS = ("data-mean",)
"""How the decoder's output bias may start: from the training data's mean (see train.fit)."""


class SettingError(InputError):
    """A setting refused by a rule: ``template`` names fields as ``{field}``; ``str()`` renders
    them as Python names, :meth:`render` as anything else (the command line's flags)."""

    inapplicable = None
    """The field refused because it does not apply (None: another rule refused it)."""

    def __init__(self, template, *names):
        self.template, self.names = template, names
        super().__init__(self.render(lambda name: name))

    def render(self, name_of):
        """The message with each ``{field}`` written as ``name_of(field)``."""
        return self.template.format_map({n: name_of(n) for n in self.names})


# -- kinds of value ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """What a setting's value must be (``expected``), how the command line's text becomes one
    (``cast``), and its canonical form (``normalize``, which raises ValueError or TypeError for
    anything else); ``show`` writes a value as the command line spells it."""

    expected: str
    cast: object
    normalize: object
    show: object = str
    choices: tuple = None
    """The texts a flag takes, where the kind is a choice (the command line lists them)."""

    def from_text(self, text):
        """The value of a flag's text; ValueError saying what was expected."""
        try:
            return self.normalize(self.cast(text))
        except (ValueError, TypeError, InputError):
            raise ValueError(f"expected {self.expected}, got {text!r}") from None

    def check(self, name, value):
        """The canonical value of a Python argument; InputError naming ``name`` otherwise (a
        library function's own InputError, such as parse_sigma's, as it says it)."""
        try:
            return self.normalize(value)
        except InputError:
            raise
        except (ValueError, TypeError):
            raise InputError(f"{name} must be {self.expected}, got {value!r}") from None


def _number(v, ok, integer=False):
    """An int (any integer type; no bool, float or text) or a float (anything float() takes
    but bool and text) that ``ok`` accepts."""
    if isinstance(v, (bool, str, bytes)) or v is None:
        raise TypeError(v)
    v = operator.index(v) if integer else float(v)
    if not ok(v):
        raise ValueError(v)
    return v


def _sizes(v):
    """Positive sizes: one (an int of any integer type) or a sequence of them, as a tuple."""
    if hasattr(v, "__index__"):
        return (_number(v, lambda h: h >= 1, integer=True),)
    if isinstance(v, (str, bytes)):
        raise TypeError(v)
    return tuple(_number(h, lambda h: h >= 1, integer=True) for h in v)


def _layer_sizes(v):
    """Hidden sizes: one stochastic layer's (400, 200), or one tuple per layer ((200, 200), (100, 100))."""
    nested = not hasattr(v, "__index__") and not isinstance(v, (str, bytes)) and len(v) > 0 and all(
        not hasattr(h, "__index__") and not isinstance(h, (str, bytes)) for h in v)
    return tuple(_sizes(h) for h in v) if nested else _sizes(v)


def _latent(v):
    """L, or one L per stochastic layer (bottom first); one layer's is an int."""
    sizes = _sizes(v)
    if not sizes:
        raise ValueError(v)
    return sizes[0] if len(sizes) == 1 else sizes


def _show_layers(v):
    return "/".join(",".join(map(str, h)) for h in v) if v and not isinstance(v[0], int) else ",".join(map(str, v))


def _choice(values, none=None):
    """One of ``values`` (a name; ``none``, if given, is the text of None)."""
    def normalize(v):
        if v is None or v == none:
            if none is None:
                raise ValueError(v)
            return None
        if v not in values:
            raise ValueError(v)
        return v
    shown = (*(() if none is None else (none,)), *values)
    return Kind(f"one of {', '.join(shown)}", str, normalize, lambda v: none if v is None else str(v), shown)


def _optional(kind, none_text):
    return Kind(kind.expected, kind.cast, lambda v: None if v is None else kind.normalize(v),
                lambda v: none_text if v is None else kind.show(v))


def _image_shape(v):
    shape = _sizes(v)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise ValueError(v)
    return shape


def _corrupt(v):
    parse_corrupt(v)
    return str(v)


def _cast_sizes(text):
    return tuple(int(p) for p in text.split(",")) if text.strip() else ()


POSITIVE_INT = Kind("a positive integer", int, lambda v: _number(v, lambda v: v >= 1, integer=True))
SEED = Kind("an integer in [0, 2**63)", int, lambda v: _number(v, lambda v: 0 <= v < 2**63, integer=True))
NONNEG = Kind("a finite number >= 0", float, lambda v: _number(v, lambda v: 0 <= v < math.inf))
POSITIVE = Kind("a finite number > 0", float, lambda v: _number(v, lambda v: 0 < v < math.inf))
FRACTION = Kind("a number in [0, 1)", float, lambda v: _number(v, lambda v: 0 <= v < 1))
OPEN_FRACTION = Kind("a number in (0, 1)", float, lambda v: _number(v, lambda v: 0 < v < 1))
HIDDEN = Kind("comma-separated sizes like 400 or 512,256 ('' for none), one group per stochastic layer "
              "separated by / (200,200/100,100)",
              lambda s: tuple(_cast_sizes(p) for p in s.split("/")) if "/" in s else _cast_sizes(s), _layer_sizes,
              _show_layers)
LATENT = Kind("a positive integer, or one per stochastic layer like 100,50", _cast_sizes, _latent,
              lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v))
IMAGE_SHAPE = Kind("H,W or H,W,C with positive sizes and C 1 or 3", lambda s: tuple(int(p) for p in s.split(",")),
                   _image_shape, lambda v: ",".join(map(str, v)))
SIGMA = Kind("fixed:V (V > 0), a number V, shared or per-pixel", str, lambda v: sigma_text(*parse_sigma(v)))
CORRUPT = Kind("none, gaussian:S (S > 0) or mask:P (0 < P < 1)", str, _corrupt)


def setting(default, help, kind, group, *, metavar=None, applies=None, resumable=False, flag=True):
    """A configuration field: its ``default``, ``help`` (the flag's), value ``kind``, the help
    ``group`` its flag appears in, when it ``applies`` (a function of the configuration giving
    None or a :class:`SettingError` template and the fields it names), whether ``--resume`` may
    change it, and whether it has a flag at all."""
    return field(default=default, metadata={"help": help, "kind": kind, "group": group, "metavar": metavar,
                                            "applies": applies, "resumable": resumable, "flag": flag})


class _Settings:
    """What both configurations share: normalising their fields, what applies, JSON."""

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, f.metadata["kind"].check(f.name, getattr(self, f.name)))
        self._resolve()
        for f in fields(self):
            if getattr(self, f.name) != f.default:
                why = self.applies(f.name)
                if why is not None:
                    refused = SettingError(f"{why.template} (given: {{{f.name}}}={getattr(self, f.name)!r})",
                                           *why.names, f.name)
                    refused.inapplicable = f.name
                    raise refused
        self._check_together()

    def _resolve(self):
        """Fill the defaults that depend on other settings."""

    def _check_together(self):
        """Rules between settings that are not about what applies."""

    def applies(self, name, model=None):
        """None if setting ``name`` takes effect here, else the :class:`SettingError` saying why."""
        return type(self).applies_to(name, self, model)

    @classmethod
    def applies_to(cls, name, values, model=None):
        """:meth:`applies` of a configuration that would hold ``values`` (anything with the
        fields as attributes: the command line's flags, before a configuration is made of them);
        ``model``: the model's settings, for a rule between training and the model."""
        rule = cls.__dataclass_fields__[name].metadata["applies"]
        why = None if rule is None else rule(values, model)
        return None if why is None else SettingError(*why)

    def replace(self, **changes):
        return replace(self, **changes)

    @classmethod
    def from_json(cls, settings, where="the configuration", unknown=InputError):
        """The configuration a run or a file records; a key that is no field is refused by name
        (raising ``unknown``: a file's reader says the file is not one this version reads)."""
        if not isinstance(settings, dict):
            raise unknown(f"{where}: the {cls._part} settings must be a JSON object, got {type(settings).__name__}")
        extra = sorted(set(settings) - {f.name for f in fields(cls)})
        if extra:
            raise unknown(f"{where}: unknown {cls._part} settings {', '.join(extra)}")
        return cls(**settings)


def _when(name, owner, value, show=False):
    """A rule: ``name`` applies to ``owner == value`` only (``show``: the message names name's value)."""
    return lambda c: None if getattr(c, owner) == value else (
        f"{{{name}}}{f' {getattr(c, name)}' if show else ''} applies to {{{owner}}} {value} only, got {{{owner}}} "
        f"{getattr(c, owner)}", name, owner)


def _sigma_applies(c, model=None):
    if LIKELIHOODS[c.likelihood].has_sigma:
        return None
    having = ", ".join(name for name, cls in LIKELIHOODS.items() if cls.has_sigma)
    return f"{{sigma}} applies to {{likelihood}} {having} only, got {{likelihood}} {c.likelihood}", "sigma", "likelihood"


def _kl_weight(name, verb, iwae_why):
    """A rule: ``name`` (β, a warm-up of it) applies where the objective weighs a KL term."""
    def rule(c, model=None):
        m = c if model is None else model
        if objective_class(m.mode, m.objective).uses_beta:
            return None
        if m.mode != "vae":
            return f"{{{name}}} {verb} the KL term, which {{mode}} {m.mode} does not have", name, "mode"
        return f"{{{name}}} {iwae_why.format(objective='{objective}')}", name, "objective"
    return rule


LATER_SETTINGS = ("posterior", "offdiag_scale", "objective", "iw_samples", "precision")
"""The model settings added after 0.1.0: a run or a model file records each only where it is not
the default (so 0.1.0's runs keep the same config.json), and reports name those it records. A
setting added after a release joins them."""


@dataclass(frozen=True)
class ModelConfig(_Settings):
    _part = "model"
    """Everything that defines a model (see the module). ``VAE(config)`` and ``VAE(**settings)``
    both build one; ``model.settings`` is it, ``model.config()`` its JSON (:meth:`to_json`).

    Several stochastic layers: ``latent`` one size per layer, bottom first, and ``hidden`` one
    tuple of sizes per layer (``latent=(100, 50), hidden=((200, 200), (100, 100))``).
    """

    input_dim: int = setting(784, "pixels per example D (the data's width)", POSITIVE_INT, "model", flag=False)
    hidden: tuple = setting((400,), "encoder layer sizes, mirrored by the decoder: 400 or 512,256; '' is a "
                            "linear VAE; with several stochastic layers one group per layer, separated by / "
                            "(200,200/100,100)", HIDDEN, "model", metavar="SIZES")
    latent: object = setting(20, "latent size, or one per stochastic layer, bottom first (100,50)", LATENT, "model",
                             metavar="L")
    activation: str = setting("relu", "hidden-layer activation", _choice(ACTIVATIONS), "model")
    likelihood: str = setting("bernoulli", "p(x|z): Bernoulli on logits, or Gaussian (see --sigma)",
                              _choice(tuple(LIKELIHOODS)), "model")
    sigma: str = setting("fixed:1.0", "--likelihood gaussian only: σ fixed at V > 0, written fixed:V or as the "
                         "number V alone (2, fixed:0.5); or learned: shared (one σ) or per-pixel (one σ per pixel)",
                         SIGMA, "model", metavar="V|fixed:V|shared|per-pixel", applies=_sigma_applies)
    mode: str = setting("vae", "vae; ae: a plain autoencoder (no KL); kl-only: the KL term alone", _choice(MODES),
                        "model")
    beta: float = setting(1.0, "weight of the KL term (β-VAE)", NONNEG, "model", applies=_kl_weight(
        "beta", "weighs", "weighs the ELBO's KL term; {objective} iwae has none"))
    dtype: str = setting("float32", "floating-point type of the model", _choice(DTYPES), "model")
    seed: int = setting(0, "seeds the initial weights and every random stream", SEED, "run")
    posterior: str = setting("diagonal", "q(z|x): diagonal N(μ, diag σ²) or full N(μ, SSᵀ)",
                             _choice(tuple(POSTERIORS)), "model", applies=lambda c, m=None: None if c.mode != "ae"
                             else ("{posterior} shapes q(z|x), which {mode} ae does not have (its code is a point)",
                                   "posterior", "mode"))
    offdiag_scale: object = setting(None, "--posterior full only: S = C × the head's outputs below the diagonal "
                                    "(1 is the plain parameterisation)", _optional(POSITIVE, "1/√L"),
                                    "model", metavar="C", applies=lambda c, m=None: _when("offdiag_scale", "posterior",
                                                                                          "full")(c))
    objective: str = setting("elbo", "elbo, or iwae: the importance-weighted bound of --iw-samples samples",
                             _choice(OBJECTIVES), "model", applies=lambda c, m=None: _when("objective", "mode", "vae")(c))
    iw_samples: object = setting(None, "--objective iwae only: samples per image",
                                 _optional(POSITIVE_INT, str(IW_SAMPLES)), "model", metavar="K",
                                 applies=lambda c, m=None: None if c.objective == "iwae" else (
                                     "{iw_samples} is the K of {objective} iwae; the ELBO draws one sample",
                                     "iw_samples", "objective"))
    precision: str = setting("fp32", "the matrix products (GPU only for tf32, bf16): fp32; tf32: TF32 tensor cores; "
                             "bf16: bfloat16 operands, FP32 accumulation. Weights, optimizer state, elementwise blocks "
                             "and losses stay float32", _choice(PRECISIONS), "model")

    def _resolve(self):
        if self.objective == "elbo" and self.iw_samples == 1:       # K = 1 is the ELBO's own
            object.__setattr__(self, "iw_samples", None)
        if self.objective == "iwae" and self.iw_samples is None:
            object.__setattr__(self, "iw_samples", IW_SAMPLES)
        if self.posterior == "full" and self.offdiag_scale is None:
            object.__setattr__(self, "offdiag_scale", 1.0 / math.sqrt(self.latents[0]))

    def _check_together(self):
        if self.precision != "fp32" and self.dtype != "float32":
            raise SettingError(f"{{precision}} {self.precision} applies to {{dtype}} float32 (it rounds float32 "
                               f"products), got {{dtype}} {self.dtype}", "precision", "dtype")
        layers = len(self.latents)
        if layers > 1 and (not self.hidden or isinstance(self.hidden[0], int) or len(self.hidden) != layers):
            raise SettingError(f"{{hidden}} holds one group of sizes per stochastic layer ({layers} in {{latent}}), "
                               f"got {_show_layers(self.hidden) or repr('')}", "hidden", "latent")
        if layers > 1 and self.mode != "vae":
            raise SettingError(f"{{latent}} of {layers} stochastic layers is a hierarchical VAE; {{mode}} {self.mode} "
                               f"has one code (use one latent size, or {{mode}} vae)", "latent", "mode")
        if layers > 1 and self.posterior != "diagonal":
            raise SettingError(f"{{latent}} of {layers} stochastic layers chains diagonal Gaussians; {{posterior}} "
                               f"{self.posterior} is built for one layer (use {{posterior}} diagonal)",
                               "latent", "posterior")

    @property
    def latents(self):
        """The latent size of each stochastic layer, bottom first."""
        return self.latent if isinstance(self.latent, tuple) else (self.latent,)

    def to_json(self) -> dict:
        """The JSON a run and a model file record: 0.1.0's settings always, the later ones
        (:data:`LATER_SETTINGS`) only where not the default."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in LATER_SETTINGS or v != f.default:
                out[f.name] = _json_value(v)
        return out

    @classmethod
    def from_json(cls, settings, where="the model's configuration", unknown=InputError):
        """The configuration a run's config.json or a model file records (unknown keys refused by
        name). A full posterior recorded without ``offdiag_scale`` is from before the scale
        existed: S_ij = o_ij, that is offdiag_scale 1 (the default 1/√L would change what its
        parameters mean)."""
        if isinstance(settings, dict) and settings.get("posterior") == "full" and "offdiag_scale" not in settings:
            settings = {**settings, "offdiag_scale": 1.0}
        return super().from_json(settings, where, unknown)


def _json_value(v):
    if isinstance(v, tuple):
        return [_json_value(x) for x in v]
    return v


def _own_data(name, what):
    """A rule: ``name`` applies to one's own data (not a built-in dataset)."""
    def rule(c, model=None):
        if c.dataset not in DATASETS:
            return None
        return f"{{{name}}} applies to one's own {what}; {c.dataset} {_BUILT_IN[name]}", name
    return rule


_BUILT_IN = {"test_fraction": "has its own test split", "image_shape": "are 28x28 images"}


@dataclass(frozen=True)
class TrainConfig(_Settings):
    _part = "train"
    """Everything about a run that is not the model's own configuration (see the module). The
    optional settings (``test_fraction`` … ``output_bias``) are None where not set, and a run
    records them only when set, so a run of 0.1.0's kind records 0.1.0's fields."""

    epochs: int = setting(10, "total epochs; with --resume the run's own unless given (a larger N extends it)",
                          POSITIVE_INT, "optimisation", metavar="N", resumable=True)
    batch_size: int = setting(128, "images per step", POSITIVE_INT, "optimisation", metavar="B")
    optimizer: str = setting("adam", "the update rule", _choice(tuple(OPTIMIZERS)), "optimisation")
    lr: float = setting(1e-3, "learning rate", POSITIVE, "optimisation")
    momentum: float = setting(0.0, "--optimizer sgd only: momentum", FRACTION, "optimisation",
                              applies=lambda c, m=None: _when("momentum", "optimizer", "sgd")(c))
    binarize: str = setting("none", "make pixels 0/1: once per image (static) or at every step (dynamic)",
                            _choice(BINARIZE), "data")
    kl_warmup: float = setting(0.0, "β rises linearly per step from 0 over this many epochs", NONNEG, "optimisation",
                               metavar="EPOCHS", applies=_kl_weight(
                                   "kl_warmup", "warms up", "does not apply to {objective} iwae: its bound has no "
                                   "separate KL term to warm up"))
    corrupt: str = setting("none", "denoising: none, gaussian:S (add S·N(0, 1)) or mask:P (zero pixels with "
                           "probability P)", CORRUPT, "data", metavar="SPEC")
    dataset: str = setting("embedded", f"{', '.join(DATASETS)} (the MNIST subset inside the package, or read from "
                           "--data-dir or downloaded), or one's own data: an .npz file (x_train[, x_test, y_train, "
                           "y_test]) or a folder of PNG/JPEG images (labels from class sub-folders)",
                           Kind("a dataset's name or a path", str, str), "data", metavar="NAME|PATH")
    test_fraction: object = setting(None, "own data without a test split: hold out this part of the images, "
                                    "chosen by --seed", _optional(OPEN_FRACTION, str(DEFAULT_TEST_FRACTION)), "data", metavar="F",
                                    applies=_own_data("test_fraction", "data"))
    image_shape: object = setting(None, "own flat data (N, D): the image shape its rows unflatten to, for the "
                                  "figures", _optional(IMAGE_SHAPE, "none"), "data", metavar="H,W[,C]",
                                  applies=_own_data("image_shape", "flat data"))
    lr_schedule: object = setting(None, "--optimizer adam: constant, or iwae: lr·10^(−i/7) in stage i of 3^i epochs "
                                  "(Burda et al.)", _choice(tuple(n for n in LR_SCHEDULES if n != "constant"),
                                                            none="constant"), "optimisation",
                                  applies=lambda c, m=None: _when("lr_schedule", "optimizer", "adam", show=True)(c))
    adam_eps: object = setting(None, "--optimizer adam: its ε", _optional(POSITIVE, str(ADAM_EPS)), "optimisation",
                               metavar="EPS", applies=lambda c, m=None: _when("adam_eps", "optimizer", "adam")(c))
    output_bias: object = setting(None, "the decoder's output bias at the start: zero, or data-mean: the output whose "
                                  "mean is each pixel's training mean (for Bernoulli, its logit)",
                                  _choice(OUTPUT_BIAS, none="zero"), "optimisation")

    @classmethod
    def applies_to(cls, name, values, model=None):
        """As :meth:`ModelConfig.applies_to`; a rule between training and the model (a KL
        warm-up) asks ``model``, the model's settings, and holds where it is None."""
        if model is None and name == "kl_warmup":
            return None
        return super().applies_to(name, values, model)

    def check_model(self, model):
        """The rules between this training and a model of :class:`ModelConfig` ``model``: a KL
        warm-up needs an objective that weighs a KL term. Returns self."""
        if self.kl_warmup:
            why = self.applies("kl_warmup", model)
            if why is not None:
                raise why
        return self

    def validate(self):
        """Self: a TrainConfig is checked when it is made (kept for callers of 0.2)."""
        return self

    def to_json(self) -> dict:
        """The fields as recorded in config.json and checkpoints; the optional ones only when set."""
        optional = {"test_fraction", "image_shape", "lr_schedule", "adam_eps", "output_bias"}
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)
                if getattr(self, f.name) is not None or f.name not in optional}


PRESETS = {
    "iwae-paper": dict(dataset="mnist", hidden=(200, 200), latent=50, activation="tanh", binarize="dynamic",
                       batch_size=20, optimizer="adam", lr=1e-3, adam_eps=1e-4, lr_schedule="iwae",
                       output_bias="data-mean", epochs=3280),
}
PRESETS["iwae-paper-2"] = {**PRESETS["iwae-paper"], "hidden": ((200, 200), (100, 100)), "latent": (100, 50)}
"""Named settings of ``train --preset``, by field name. ``iwae-paper``: the MNIST setup of Burda,
Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016), section 5 and appendix: two
tanh layers of 200 and a 50-d latent, dynamically binarised images, batches of 20, Adam (β₁ 0.9, β₂
0.999, ε 1e-4) at 1e-3 · 10^(−i/7) in stage i of 3ⁱ epochs for i = 0…7 (3280 epochs), the output
bias started at the logit of the pixel means. The objective (--objective, --iw-samples) and q(z|x)
(--posterior) stay free: they are what the paper compares. ``iwae-paper-2``: the same with the paper's
two stochastic layers: q(h₁|x) through 784-200-200-(2·100), q(h₂|h₁) through 100-100-100-(2·50),
p(h₁|h₂) through 50-100-100-(2·100) and p(x|h₁) through 100-200-200-784, all tanh."""
