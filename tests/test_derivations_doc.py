"""docs/derivations.md stays true to the code: every link resolves, every function or test it
names in a link is defined in the file it links to, and every section has its formulas in a
``$$`` block, a link into the package and a link to the test that checks it."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "derivations.md"
LINK = re.compile(r"\[([^\]]+)\]\(([^)#]+)\)")


def sections():
    text = DOC.read_text()
    parts = re.split(r"^## ", text, flags=re.M)
    return {p.splitlines()[0]: p for p in parts[1:]}


def test_every_link_resolves_and_names_what_its_file_defines():
    checked = 0
    for label, target in LINK.findall(DOC.read_text()):
        path = (DOC.parent / target).resolve()
        assert path.is_file() and REPO in path.parents, f"{target} is not a file of the repository"
        source = path.read_text()
        for name in re.findall(r"`([A-Za-z_][\w.]*)`", label):
            leaf = name.split(".")[-1]
            if path.suffix == ".py" and not name.endswith(".py"):
                assert re.search(rf"^\s*(def|class) {leaf}\b|^{leaf} = ", source, flags=re.M), \
                    f"{name} is not defined in {target}"
                checked += 1
    assert checked >= 60


def test_every_section_has_formulas_code_and_a_test():
    found = sections()
    assert len(found) == 13
    for title, body in found.items():
        assert body.count("$$") >= 2, title
        targets = [t for _, t in LINK.findall(body)]
        assert any(t.startswith("../scratchvae/") for t in targets), title
        assert any(t.startswith("../tests/") for t in targets), title


def test_the_readme_links_to_it():
    assert "(docs/derivations.md)" in (REPO / "README.md").read_text()
