"""Shared test setup: the ``backend`` fixture, headless matplotlib, hypothesis profiles.

``pytest --backend numpy`` (or cupy) restricts the backend-parametrized tests; cupy cases
skip with a reason when no usable GPU is present.
"""

import os
import tempfile

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="scratchvae-mpl-"))
os.environ.setdefault("SCRATCHVAE_OFFLINE", "1")

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", derandomize=True, deadline=None, max_examples=60, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("long", deadline=None, max_examples=5000)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass

ALL_BACKENDS = ("numpy", "cupy")


def pytest_addoption(parser):
    parser.addoption("--backend", action="append", choices=ALL_BACKENDS,
                     help="run backend-parametrized tests only on this backend (repeatable)")


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--backend") or list(ALL_BACKENDS)
        metafunc.parametrize("backend", chosen, indirect=True)


@pytest.fixture
def backend(request):
    """A scratchvae Backend; cupy skips with a reason when no GPU is usable."""
    from scratchvae.backend import cupy_unusable_reason, get_backend

    if request.param == "cupy":
        why = cupy_unusable_reason()
        if why is not None:
            pytest.skip(f"cupy backend: {why}")
    return get_backend(request.param)


@pytest.fixture(params=["numba", "numpy"], ids=["twins", "bodies"])
def fused_path(request, monkeypatch):
    """Run a test twice: with the Numba twins (skipped where Numba does not import) and with the
    NumPy bodies (as ``SCRATCHVAE_NUMBA=0`` would, switched for this test only)."""
    from scratchvae.backend import NUMPY, _NoTwins

    if request.param == "numpy":
        monkeypatch.setattr(NUMPY, "_twins", _NoTwins("switched off for this test"))
    elif not NUMPY.twins():
        pytest.skip(f"no Numba twins: {NUMPY.twins().why}")
    return request.param


@pytest.fixture
def cp():
    """The cupy module, for tests written directly against it; skips without a usable GPU."""
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as exc:  # no driver, no device
        pytest.skip(f"no usable CUDA device: {exc}")
    return cupy
