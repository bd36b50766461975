import pytest

from pithos.blocker import MemoryBlockStore
from tests.blocker_contract import BlockStoreContract


class TestMemoryBlockStore(BlockStoreContract):
    @pytest.fixture
    def store(self):
        yield MemoryBlockStore()
