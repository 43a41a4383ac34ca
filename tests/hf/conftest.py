"""Fixtures shared by the aot_integrations.hf tests."""

import pytest


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
