"""The README's commands and Python example are what the project actually does."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
CI = Path(__file__).resolve().parents[1] / ".ci" / "run"


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_example_runs(capsys):
    code, _ = _blocks("python")
    assert len(code.strip().splitlines()) <= 10
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    res, images = namespace["res"], namespace["images"]
    assert set(res.per_sample()) == {"recon", "kl", "objective", "neg_elbo"}
    assert images.shape == (16, 784)
    assert "recon" in capsys.readouterr().out


def test_the_gradcheck_example_passes_its_stated_tolerance(monkeypatch, capsys):
    """The README's gradient check as written, on 10 coordinates per array instead of 200 (the
    README's 2 minutes). Its loss sums 128 images (7·10⁴ nats), so rounding alone puts each
    error near its floor ε|f|/(h·scale), far above 1e-7: the tolerance is in floors."""
    import scratchvae

    ten, check = _blocks("python")
    namespace = {}
    exec(compile(ten, str(README), "exec"), namespace)
    real = scratchvae.gradcheck_model
    monkeypatch.setattr(scratchvae, "gradcheck_model", lambda *a, **kw: real(*a, max_coords=10, **kw))
    capsys.readouterr()
    exec(compile(check, str(README), "exec"), namespace)
    assert capsys.readouterr().out.startswith("True GradcheckResult(8 arrays, largest error ")
    err = namespace["err"]
    assert err.ok() and sum(err.checked.values()) == 8 * 10
    assert max(err.values()) > 1e-7 and all(1e-7 < f < 1e-5 for f in err.floor.values()), err.floor


def test_ci_runs_the_readme_test_command():
    install, test = _blocks("sh")[1].strip().split(" && ")
    ci = CI.read_text()
    assert install in ci and test in ci
    assert "bench" not in ci and "gpu" not in ci
    assert "reference" in install, "CI installs the reference extra, so the autograd references run"
    assert "SCRATCHVAE_REQUIRE_REFERENCE=1" in ci, "CI fails, not skips, the autograd references without JAX"
    assert "dist" in install, "CI installs the dist extra, so the tests on MPI ranks run"


def test_the_section_on_ranks_gives_the_commands_the_project_runs():
    """'More than one core': the install, the launch and the resume as the tests run them."""
    text = README.read_text()
    section = text[text.index("## More than one core"):]
    section = section[:section.index("\n## ", 5)]
    for words in ("pip install -e '.[dist]'", "mpiexec -n 2 scratchvae train", "--resume",
                  "mpiexec -n 2 scratchvae evaluate", "--hostfile"):
        assert words in section, words
