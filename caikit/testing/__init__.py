"""Test helpers shipped with the package: a loopback fake of the OpenAI and Anthropic HTTP APIs.

Tests, benchmarks and offline dry runs (`--base-url` pointed at it) use it to exercise the real
SDKs, retries and rate limits without a network or a key that costs money.
"""

from caikit.testing.fake_api import FakeAPIServer, FakeRequest, FaultPlan, LoggedRequest, default_responder
from caikit.testing.fake_batch import BatchFaultPlan, FakeBatchJob

__all__ = ["BatchFaultPlan", "FakeAPIServer", "FakeBatchJob", "FakeRequest", "FaultPlan", "LoggedRequest",
           "default_responder"]
