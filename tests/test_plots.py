"""Figures: every PNG loads, has its fixed pixel size, is not blank, and is deterministic.

Models are tiny (hidden 32, one epoch on 500 embedded images): the figures are blurry, but
every code path that draws them runs. ``MPLBACKEND=Agg`` comes from conftest.py.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib.image as mpimg  # noqa: E402

from scratchvae import TrainConfig, VAE, fit, load_run  # noqa: E402
from scratchvae.data import Dataset, load_dataset  # noqa: E402
from scratchvae.errors import InputError  # noqa: E402
from scratchvae.runs import write_config  # noqa: E402
from scratchvae import plots  # noqa: E402

ALL_FIGURES = ["latent", "manifold", "reconstructions", "abstraction", "samples", "interpolation",
               "arithmetic", "losses"]


@pytest.fixture(scope="module")
def data():
    train, test = load_dataset("embedded")
    small = Dataset(train.images[:500], train.labels[:500], "train500")
    return small, test


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """name -> Run: VAE with L = 2 and L = 5, an AE, a Gaussian VAE with a learned σ, and a
    full-covariance VAE trained on the importance-weighted bound."""
    train, test = data
    specs = {
        "vae2": dict(latent=2),
        "vae5": dict(latent=5),
        "ae2": dict(latent=2, mode="ae"),
        "gauss3": dict(latent=3, likelihood="gaussian", sigma="shared"),
        "full2iw": dict(latent=2, posterior="full", objective="iwae", iw_samples=2),
    }
    out = {}
    for name, kw in specs.items():
        model = VAE(hidden=(32,), seed=1, **kw)
        d = tmp_path_factory.mktemp(name)
        cfg = TrainConfig(epochs=1, batch_size=100)
        write_config(d, model, cfg)
        fit(model, train.images, test.images[:300], config=cfg, run_dir=d)
        out[name] = load_run(d)
    return out


def expected_shape(kind, columns=1):
    w, h = plots.FIGSIZE[kind]
    return round(h * plots.DPI), round(w * columns * plots.DPI)


def check_png(path, kind, columns=1):
    """The PNG has its kind's size (the interpolation: its width, and at most its height: it is as
    tall as its images need) and is not blank."""
    img = mpimg.imread(path)
    (h, w), want = img.shape[:2], expected_shape(kind, columns)
    assert (h <= want[0] and w == want[1]) if kind == "interpolation" else (h, w) == want, (path, img.shape)
    assert img[..., :3].std() > 0.05, f"{path} looks blank"
    return img


@pytest.mark.parametrize("name", ["vae2", "vae5", "ae2", "gauss3", "full2iw"])
def test_plot_run_writes_every_figure(runs, data, tmp_path, name):
    import matplotlib.pyplot as plt

    run = runs[name]
    train, test = data
    before = {k: v.copy() for k, v in run.model.rng.state().items()}
    paths = plots.plot_run(run, train, test, tmp_path / "figs", n=16, seed=3, draw=name == "gauss3")
    kinds = [k for k in ALL_FIGURES if not (k == "abstraction" and run.model.mode == "ae")]
    kinds += ["posteriors"] if run.model.latent == 2 else []
    assert [p.name for p in paths] == [plots.FILES[k] for k in kinds]
    for p, kind in zip(paths, kinds):
        check_png(p, kind, len(plots.loss_panels(run.model.objective)) if kind == "losses" else 1)
    assert plt.get_fignums() == [], "a figure was left open"
    after = run.model.rng.state()
    assert all(np.array_equal(before[k], after[k]) for k in before), "plotting advanced the model's streams"


def test_figures_are_deterministic_given_seed(runs, data, tmp_path):
    model = runs["vae2"].model
    _, test = data
    a = mpimg.imread(plots.sample_figure(model, 25, 7, False, tmp_path / "a.png"))
    b = mpimg.imread(plots.sample_figure(model, 25, 7, False, tmp_path / "b" / "c" / "b.png"))
    c = mpimg.imread(plots.sample_figure(model, 25, 8, False, tmp_path / "c.png"))
    d = mpimg.imread(plots.sample_figure(model, 25, 7, True, tmp_path / "d.png"))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, d)
    r1 = mpimg.imread(plots.reconstruction_figure(model, test, tmp_path / "r1.png", n=8, seed=1))
    r2 = mpimg.imread(plots.reconstruction_figure(model, test, tmp_path / "r2.png", n=8, seed=1))
    assert np.array_equal(r1, r2)


def test_sample_figure_sizes_do_not_depend_on_n(runs, tmp_path):
    model = runs["vae5"].model
    for n in (1, 7, 100):
        check_png(plots.sample_figure(model, n, 0, False, tmp_path / f"s{n}.png"), "samples")


def test_bad_arguments_raise_input_error(runs, data, tmp_path):
    _, test = data
    with pytest.raises(InputError, match="n must be a positive integer"):
        plots.sample_figure(runs["vae2"].model, 0, 0, False, tmp_path / "x.png")
    with pytest.raises(InputError, match="autoencoder"):
        plots.abstraction_figure(runs["ae2"].model, test, tmp_path / "x.png")
    one_class = Dataset(test.images[test.labels == 3], test.labels[test.labels == 3], "threes")
    with pytest.raises(InputError, match="two classes"):
        plots.arithmetic_figure(runs["vae2"].model, one_class, tmp_path / "x.png")
    with pytest.raises(InputError, match="history is empty"):
        plots.loss_figure([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_kl_per_unit_hand_worked():
    # unit 0: μ = ±1, logvar = 0 -> ½(1 + 1 − 1 − 0) = ½ each; unit 1: μ = 0, logvar = log 4, 0
    # -> ½(4 − 1 − log 4) and 0, mean ¼(3 − log 4)
    mu = np.array([[1.0, 0.0], [-1.0, 0.0]])
    lv = np.array([[0.0, np.log(4.0)], [0.0, 0.0]])
    model = VAE(input_dim=4, hidden=(3,), latent=2, dtype="float64")
    np.testing.assert_allclose(plots.kl_per_unit(model, mu, lv), [0.5, 0.25 * (3 - np.log(4.0))], rtol=1e-15)


def test_slerp_endpoints_and_midpoint():
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 2.0, 0.0])
    path = plots.slerp(a, b, np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(path[0], a, atol=1e-15)
    np.testing.assert_allclose(path[2], b, atol=1e-15)
    # ω = π/2: midpoint = (a + b) sin(π/4) / sin(π/2)
    np.testing.assert_allclose(path[1], (a + b) * np.sqrt(0.5), rtol=1e-15)
    # parallel vectors fall back to the straight line
    np.testing.assert_allclose(plots.slerp(a, 3 * a, np.array([0.5])), [2 * a])


def synthetic_results(n=300, m=100, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for j, name in enumerate(["AE", "KL-only", "VAE"]):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        codes = rng.normal(size=(n, 2)) + labels[:, None] * (j + 0.5)
        out[name] = {"codes": codes, "labels": labels, "decodes": rng.uniform(size=(m, 784)),
                     "probe_accuracy": 0.1 + 0.3 * j}
    return out


def test_comparison_figure(tmp_path, drawn):
    import matplotlib.pyplot as plt

    res = synthetic_results()
    path = plots.comparison_figure(res, tmp_path / "sub" / "compare.png")
    check_png(path, "comparison", columns=3)
    assert drawn["compare.png"]["legends"] == [("label", [str(c) for c in range(10)])]
    names = {k: dict(r, classes=[f"folder-{c}" for c in range(10)]) for k, r in res.items()}
    plots.comparison_figure(names, tmp_path / "named.png")
    assert drawn["named.png"]["legends"] == [("label", [f"folder-{c}" for c in range(10)])]
    assert drawn["named.png"]["cut"] == [] and drawn["named.png"]["xlabels"][0] == "z[0] (μ)"
    two = {k: res[k] for k in ("AE", "VAE")}
    check_png(plots.comparison_figure(two, tmp_path / "two.png"), "comparison", columns=2)
    higher = dict(res, VAE=dict(res["VAE"], codes=np.random.default_rng(1).normal(size=(300, 6))))
    check_png(plots.comparison_figure(higher, tmp_path / "pca.png"), "comparison", columns=3)
    assert plt.get_fignums() == []


@pytest.mark.parametrize("bad, match", [
    ({}, "non-empty"),
    ({"VAE": {"codes": np.zeros((3, 2)), "labels": np.zeros(3)}}, "missing decodes, probe_accuracy"),
    ({"VAE": {"codes": np.zeros((3, 2)), "labels": np.zeros(3), "decodes": np.zeros((10, 784)),
              "probe_accuracy": 0.5}}, "square"),
    ({"VAE": {"codes": np.zeros((3, 2)), "labels": np.zeros(4), "decodes": np.zeros((9, 784)),
              "probe_accuracy": 0.5}}, "labels"),
])
def test_comparison_figure_rejects_bad_results(tmp_path, bad, match):
    with pytest.raises(InputError, match=match):
        plots.comparison_figure(bad, tmp_path / "x.png")


def _python(code, **env):
    full = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    full.update(env)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_matplotlib_is_lazy_and_a_chosen_backend_is_respected(tmp_path):
    code = (
        "import sys, numpy as np; import scratchvae, scratchvae.plots as p\n"
        "assert 'matplotlib' not in sys.modules, 'importing scratchvae imported matplotlib'\n"
        "m = scratchvae.VAE(hidden=(8,), latent=2)\n"
        f"p.sample_figure(m, 4, 0, False, {str(tmp_path / 's.png')!r})\n"
        "import matplotlib; print(matplotlib.get_backend().lower())\n"
    )
    assert _python(code) == "agg"
    assert _python(code, MPLBACKEND="pdf") == "pdf"
    assert mpimg.imread(tmp_path / "s.png").shape[:2] == expected_shape("samples")


def test_one_latent_unit(data, tmp_path):
    _, test = data
    model = VAE(hidden=(16,), latent=1, seed=2)
    small = Dataset(test.images[:200], test.labels[:200], "test200")
    check_png(plots.latent_figure(model, small, tmp_path / "l.png"), "latent")
    check_png(plots.manifold_figure(model, small, tmp_path / "m.png", k=9), "manifold")
    check_png(plots.interpolation_figure(model, small, tmp_path / "i.png", steps=5), "interpolation")


def test_figures_on_every_backend(backend, data, tmp_path):
    _, test = data
    small = Dataset(test.images[:200], test.labels[:200], "test200")
    model = VAE(hidden=(16,), latent=3, seed=4, backend=backend)
    check_png(plots.sample_figure(model, 9, 0, True, tmp_path / "s.png"), "samples")
    check_png(plots.abstraction_figure(model, small, tmp_path / "a.png", inputs=2, samples=3), "abstraction")
    check_png(plots.arithmetic_figure(model, small, tmp_path / "r.png", train=small, pairs=2), "arithmetic")
    check_png(plots.manifold_figure(model, small, tmp_path / "m.png", k=5), "manifold")


def test_posterior_figure_ellipses_and_panels(data, tmp_path):
    """Three panels side by side (AE points, diagonal and full ellipses) at the fixed size; the
    ellipse axes of a hand-worked covariance; models without a 2-D latent are refused."""
    import matplotlib.pyplot as plt

    _, test = data
    small = Dataset(test.images[:120], test.labels[:120], "test120")
    models = {"AE": VAE(hidden=(16,), latent=2, seed=1, mode="ae"), "diagonal": VAE(hidden=(16,), latent=2, seed=1),
              "full": VAE(hidden=(16,), latent=2, seed=1, posterior="full")}
    check_png(plots.posterior_figure(models, small, tmp_path / "p.png", n=50), "posteriors", columns=3)
    check_png(plots.posterior_figure(models["full"], small, tmp_path / "one.png"), "posteriors")
    assert plt.get_fignums() == []
    # Σ = R diag(9, 1) Rᵀ with R a rotation by 30°: axes 2·3 and 2·1, the major one at 30°
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    R = np.array([[c, -s], [s, c]])
    w, h, a = plots.ellipse_axes((R @ np.diag([9.0, 1.0]) @ R.T)[None])
    np.testing.assert_allclose([w[0], h[0], a[0] % 180], [6.0, 2.0, 30.0], rtol=1e-12)
    w, h, a = plots.ellipse_axes(np.diag([0.25, 4.0])[None])            # axis-aligned: along z₂
    np.testing.assert_allclose([w[0], h[0], abs(a[0]) % 180], [4.0, 1.0, 90.0], rtol=1e-12)
    with pytest.raises(InputError, match="the posterior figure draws 2-D latents: big has latent"):
        plots.posterior_figure({"big": VAE(hidden=(8,), latent=3)}, small, tmp_path / "x.png")


@pytest.fixture
def drawn(monkeypatch):
    """{file name: the texts of the figure saved there}: its suptitle, each axes' title, tick and
    axis labels, each legend's title and entries (figure legends too), and under "cut" those of
    the titles, axis labels and legends that reach past the figure's edges once laid out."""
    texts, real = {}, plots.frame._save

    def save(plt, fig, path):
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
        fig.canvas.draw()
        shown = [t for t in [fig._suptitle, *(a for ax in fig.axes for a in (ax.title, ax.xaxis.label, ax.yaxis.label)),
                             *(t for lg in legends for t in (lg.get_title(), *lg.get_texts()))]
                 if t is not None and t.get_visible() and t.get_text()]
        W, H = fig.canvas.get_width_height()
        texts[Path(path).name] = {
            "cut": [t.get_text() for t, b in ((t, t.get_window_extent()) for t in shown)
                    if b.x0 < -0.5 or b.y0 < -0.5 or b.x1 > W + 0.5 or b.y1 > H + 0.5],
            "suptitle": fig._suptitle.get_text() if fig._suptitle is not None else "",
            "titles": [ax.get_title() for ax in fig.axes],
            "xlabels": [ax.get_xlabel() for ax in fig.axes], "ylabels": [ax.get_ylabel() for ax in fig.axes],
            "yticks": [[t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes],
            "xticks": [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes],
            "legends": [(lg.get_title().get_text(), [t.get_text() for t in lg.get_texts()]) for lg in legends]}
        return real(plt, fig, path)
    monkeypatch.setattr(plots.frame, "_save", save)
    return texts


@pytest.mark.parametrize("name, titles", [
    ("vae2", ["−ELBO (recon + KL)", "reconstruction −log p(x|z)", "KL(q(z|x) ‖ p(z))"]),
    ("full2iw", ["−L_2 (importance-weighted bound)", "reconstruction −log p(x|z), one z", "KL(q(z|x) ‖ p(z)), one z"]),
    ("ae2", ["reconstruction −log p(x|z), z = μ(x)"]),
])
def test_the_loss_curves_are_the_runs_objectives(runs, data, tmp_path, drawn, name, titles):
    """plot_run names the panels as the run's objective does (an importance-weighted run's −L_K,
    beside one z's terms), and an autoencoder's figure is its reconstruction alone, one panel
    wide: no KL panel of zeros."""
    (path,) = [p for p in plots.plot_run(runs[name], *data, out_dir=tmp_path) if p.name == "losses.png"]
    assert drawn["losses.png"]["titles"] == titles
    check_png(path, "losses", columns=len(titles))


@pytest.fixture(scope="module")
def named(data):
    """Test images in three classes named as image folders name them: folders 2, 9, 10 sort as
    strings to 10, 2, 9, labels 0, 1, 2 (here the digits 1, 2 and 9)."""
    _, test = data
    keep = np.isin(test.labels, (1, 2, 9))
    labels = np.searchsorted([1, 2, 9], test.labels[keep])
    return Dataset(test.images[keep][:240], np.array([1, 2, 0])[labels][:240].astype(np.int64), "digits",
                   classes=("10", "2", "9"))


def test_figures_name_classes_as_the_data_do(runs, named, tmp_path, drawn):
    """Legends, the arithmetic's rows and the interpolation's title carry the folder names (not the
    labels 0, 1, 2); every title, label and legend entry lies inside its figure."""
    plots.plot_run(runs["vae2"], named, named, out_dir=tmp_path)
    assert drawn["latent.png"]["legends"] == [("label", ["10", "2", "9"])]
    assert drawn["posteriors.png"]["legends"] == [("label", ["10", "2", "9"])]
    rows = drawn["arithmetic.png"]["yticks"][0]
    assert all(re.fullmatch(r"(10|2|9): z = μ|(10|2|9)→(10|2|9): μ \+ m\[\2|\3\] − m\[\1\]|.*", r) for r in rows)
    assert {r.split(":")[0].split("→")[0] for r in rows} <= {"10", "2", "9"} and len(rows) == 6
    assert "test images of class a" in drawn["arithmetic.png"]["titles"][0]
    assert re.search(r"\(label (10|2|9)\) → test #\d+ \(label (10|2|9)\)", drawn["interpolation.png"]["titles"][0])
    for name, texts in drawn.items():
        assert texts["cut"] == [], (name, texts["cut"])


def test_the_posterior_figure_fits_its_title_and_every_class(runs, data, tmp_path, drawn):
    """One panel is 460 px wide: its title wraps, and the ten classes' legend takes two rows rather
    than running past both edges; unlabelled data get one colour and no legend."""
    _, test = data
    check_png(plots.posterior_figure(runs["vae2"].model, test, tmp_path / "one.png"), "posteriors")
    one = drawn["one.png"]
    assert one["cut"] == [] and "\n" in one["suptitle"]
    assert one["legends"] == [("label", [str(c) for c in range(10)])]
    unlabelled = Dataset(test.images[:100], None, "unlabelled")
    plots.posterior_figure(runs["vae2"].model, unlabelled, tmp_path / "u.png")
    assert drawn["u.png"]["legends"] == [] and drawn["u.png"]["cut"] == []


def test_units_are_numbered_as_the_codes_columns(runs, data, tmp_path, drawn):
    """z[j] on a figure is column j of the codes (mu[:, j]), from 0."""
    _, test = data
    plots.manifold_figure(runs["vae2"].model, test, tmp_path / "m2.png", k=5)
    assert drawn["m2.png"]["xlabels"] == ["z[0]"] and drawn["m2.png"]["ylabels"] == ["z[1]"]
    model = runs["vae5"].model
    plots.manifold_figure(model, test, tmp_path / "m5.png", k=5)
    mu, logvar = model.encode(model.backend.asarray(test.images[:1000].astype(np.float32) / 255))
    u, v = np.argsort(-plots.kl_per_unit(model, mu, logvar), kind="stable")[:2]
    assert drawn["m5.png"]["xlabels"] == [f"z[{u}]"] and drawn["m5.png"]["ylabels"] == [f"z[{v}]"]
    assert f"z[{u}], z[{v}]: highest mean KL" in drawn["m5.png"]["titles"][0]
    plots.latent_figure(runs["vae2"].model, test, tmp_path / "l.png")
    plots.posterior_figure(runs["vae2"].model, test, tmp_path / "p.png")
    assert drawn["l.png"]["xlabels"] == ["z[0] (μ)"] and drawn["p.png"]["ylabels"] == ["z[1]"]


def test_interpolation_has_no_blank_band(runs, named, tmp_path):
    """The figure is as tall as its two rows of images need: no more than a few white rows above
    the title and below the axis label."""
    img = mpimg.imread(plots.interpolation_figure(runs["vae2"].model, named, tmp_path / "i.png"))
    assert img.shape[1] == expected_shape("interpolation")[1] and img.shape[0] < expected_shape("interpolation")[0]
    ink = np.flatnonzero((img[..., :3] < 0.9).any(axis=(1, 2)))
    assert ink[0] <= 25 and img.shape[0] - 1 - ink[-1] <= 25, (ink[0], img.shape[0] - 1 - ink[-1])   # was 50 above


def test_the_posterior_panel_holds_the_prior_circle_its_title_names(data, tmp_path, monkeypatch):
    """Codes far from the origin (the head's bias moved by 8): the window still holds the dashed
    circle of N(0, I), which the title names."""
    _, test = data
    m = VAE(hidden=(16,), latent=2, seed=1)
    m.params["enc.head.b"][:2] = 8.0
    seen = []
    monkeypatch.setattr("scratchvae.plots.frame._save", lambda plt, fig, path: seen.extend(
        (ax.get_xlim(), ax.get_ylim()) for ax in fig.axes if ax.patches))
    plots.posterior_figure(m, Dataset(test.images[:60], test.labels[:60], "t"), tmp_path / "p.png", n=40)
    (x0, x1), (y0, y1) = seen[0]
    assert x0 <= -1 and x1 >= 7 and y0 <= -1 and y1 >= 7
