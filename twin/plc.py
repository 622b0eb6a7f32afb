"""The PLC's own setpoints as a stateless unit, so tags can address them by signal name.

Signals ``plc.<name>`` (SI). Outputs echo the inputs; there are no states. The basic
regulatory logic that reads them (temperature PI, salt make-up, carousel switch limit) lives
in ``twin.sequences``.
"""

from __future__ import annotations

import numpy as np


class PlcSetpoints:
    def __init__(self, names: tuple[str, ...]):
        self.name = "plc"
        self.state_names: tuple[str, ...] = ()
        self.input_names = names
        self.output_names = names

    def derivatives(self, t, x, u, p) -> np.ndarray:
        return np.zeros(0)

    def outputs(self, t, x, u, p) -> np.ndarray:
        return np.array(u, dtype=float, copy=True)
