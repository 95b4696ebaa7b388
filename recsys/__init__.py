"""recsys core: data contract, catalogue, eligibility, arbitration, settings, command line."""

__version__ = "0.1.0"
