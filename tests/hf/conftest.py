"""Fixtures shared by the aot_integrations.hf tests: the tiny models (one per module) and a
self-removing ``apply``."""

import pytest

from aot_integrations import tiny


@pytest.fixture(scope="module")
def ov():
    return tiny.onevision()


@pytest.fixture(scope="module")
def qwen():
    return tiny.qwen2_5_vl()


@pytest.fixture(scope="module")
def qwen3():
    return tiny.qwen3_vl()


@pytest.fixture
def applied():
    """``aot_integrations.hf.apply`` that removes every handle it made when the test ends (so a failing test
    cannot leave a patched model to the next one of the module-scoped models)."""
    import aot_integrations.hf

    handles = []

    def apply(model, reduction, **kw):
        handle = aot_integrations.hf.apply(model, reduction, **kw)
        handles.append(handle)
        return handle

    yield apply
    for handle in handles:
        if getattr(handle.model, "_aot_hf_handle", None) is handle:
            handle.remove()
