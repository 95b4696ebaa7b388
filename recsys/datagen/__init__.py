"""Demo data with ground truth: a simulated omnichannel business (see docs/demo-data.md).

``generate_dataset`` writes the seven contract tables and ``ground_truth/``;
``recsys.datagen.truth`` computes the true value of any policy on them.
"""

from recsys.datagen.generate import GenerationSummary, generate_dataset
from recsys.datagen.params import SimParams

__all__ = ["GenerationSummary", "SimParams", "generate_dataset"]
