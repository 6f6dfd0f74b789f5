"""The solver engine: drift ladders, Brownian paths, EM and ML-EM.

Knows nothing of calibration, diffusion models or the command line.
"""

from .brownian import BrownianPath
from .buckets import Bucketed, bucket_sizes, bucketed
from .call_schedule import CallSchedule, SubLadderEvaluator, schedule_estimate
from .checks import all_finite, modified_input_error, non_finite_error, tensor_version
from .compiled import CompiledLevel
from .ladder import Drift, Ladder
from .random import rand, randn, sample_generators
from .rates import check_rates, firing_probabilities, firing_probability, rate_value
from .solver import LevelEvaluator, Rate, Solution, evaluate_rates, solve, telescoping_estimate

__all__ = [
    "BrownianPath",
    "Bucketed",
    "bucket_sizes",
    "CallSchedule",
    "SubLadderEvaluator",
    "schedule_estimate",
    "CompiledLevel",
    "Drift",
    "all_finite",
    "non_finite_error",
    "modified_input_error",
    "tensor_version",
    "Ladder",
    "LevelEvaluator",
    "Rate",
    "Solution",
    "evaluate_rates",
    "rand",
    "randn",
    "bucketed",
    "sample_generators",
    "solve",
    "telescoping_estimate",
    "check_rates",
    "firing_probabilities",
    "firing_probability",
    "rate_value",
]
