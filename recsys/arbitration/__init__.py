from recsys.arbitration.legacy import *  # noqa: F403
