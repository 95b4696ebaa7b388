from recsys.eligibility.base import *  # noqa: F403
from recsys.eligibility.legacy import *  # noqa: F403
from recsys.eligibility.legacy import _capped_out  # noqa: F401
