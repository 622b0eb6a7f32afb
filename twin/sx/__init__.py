"""Steady-state solvent-extraction chemistry for any set of species.

- ``twin.sx.acid``: bisulfate speciation, chloride, strong-acid activity (Davies, Bromley).
- ``twin.sx.distribution``: distribution models (constant, mass action, PrOMMiS's empirical
  dosage form, separation factor with acidity and loading).
- ``twin.sx.cascade``: equilibrium-stage cascade (any of extraction / scrub / strip, open or
  closed organic loop), its stage equations and analytic Jacobian.
- ``twin.sx.steady``: Newton with line search, pseudo-transient fallback.
- ``twin.sx.build``: a ``pilot_config.sx_case`` YAML case turned into a cascade; outlets in mg/L.
"""

from twin.sx.build import SxCase, case_from_config, outlets, recovery
from twin.sx.steady import NotConverged, SteadyState, solve_steady

__all__ = ["SxCase", "case_from_config", "outlets", "recovery", "NotConverged", "SteadyState",
           "solve_steady"]
