"""Fixtures of the op tests."""
import pytest

from mmsparse.ops import _dispatch
from mmsparse.ops._dispatch import ENV_VAR, through_custom_ops


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch):
    """Every op test picks its backend itself, whatever ``MMSPARSE_ATTN_BACKEND`` says outside."""
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture(autouse=True)
def custom_ops_state_is_restored():
    """No op test leaves eager calls going through the custom ops for the tests after it (an
    error at the teardown of the test that does)."""
    yield
    assert not _dispatch._STATE['through_custom_ops'], 'this test left through_custom_ops() on'


@pytest.fixture
def through_the_custom_ops():
    """Eager calls go through the custom ops (and their registered backward), as in a traced graph."""
    with through_custom_ops():
        yield
