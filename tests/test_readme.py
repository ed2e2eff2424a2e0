"""The README's commands and Python example are what the project actually does."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
CI = Path(__file__).resolve().parents[1] / ".ci" / "run"


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_example_runs(capsys):
    (code,) = _blocks("python")
    assert len(code.strip().splitlines()) <= 10
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    res, images = namespace["res"], namespace["images"]
    assert set(res.per_sample()) == {"recon", "kl", "objective", "neg_elbo"}
    assert images.shape == (16, 784)
    assert "recon" in capsys.readouterr().out


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
