import pytest

import dnmp.ops as ops


@pytest.fixture(scope="session")
def cpp():
    """Skip tests that compare the compiled kernels with the reference when only
    the reference is available (DNMP_FORCE_REFERENCE=1 or no compiler)."""
    if ops.backend() != "cpp":
        pytest.skip("compiled kernels not available (backend() == 'reference')")
    return True
