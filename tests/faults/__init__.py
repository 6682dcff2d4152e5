"""The fault suite; the harness's shared assertions get pytest's detailed messages."""

import pytest

pytest.register_assert_rewrite("tests.faults.harness")
