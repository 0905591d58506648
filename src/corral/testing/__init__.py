"""Public test helpers: a deterministic fake model, a fake detokenizer, a ready
engine core over them, and hypothesis strategies. Nothing here needs torch."""

from corral.testing.detokenizer import FakeDetokenizer as FakeDetokenizer
from corral.testing.fake_core import FAKE_EOS_TOKEN_ID as FAKE_EOS_TOKEN_ID
from corral.testing.fake_core import make_fake_core as make_fake_core
from corral.testing.fake_runner import FakeModelError as FakeModelError
from corral.testing.fake_runner import FakeModelRunner as FakeModelRunner
from corral.testing.strategies import WorkloadRequest as WorkloadRequest
from corral.testing.strategies import sampling_params as sampling_params
from corral.testing.strategies import workloads as workloads
