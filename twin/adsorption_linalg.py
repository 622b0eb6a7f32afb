"""Fast linear solves with G = α·I − J for the carousel (α = 1/(h·γ) of a Rosenbrock step).

Structure used (see ``twin.adsorption`` for J):
- the adsorbent rows are diagonal in q (LDF), so q is eliminated cell by cell (static
  condensation): (α + k_i) z_q,i = r_q,i + Σ_j A_ij z_c,j + a_i z_H, with A = k·∂q*/∂c and
  a = k·∂q*/∂H (k per column and species). The liquid rows then read
  α z_c − (T z)_c + (ρ_b/ε)·α/(α + k)·(A z_c + a z_H) = r_c + (ρ_b/ε)·k/(α + k)·r_q
  α z_H − (T z)_H − Σ_i n_i (ρ_b/ε)·α/(α + k_i)·(A z_c + a z_H)_i = r_H − Σ_i n_i (ρ_b/ε)·k_i/(α + k_i)·r_q,i
  (T: transport; the second line is the protons released on uptake), a system in the liquid only;
- ordering the columns in flow order (lead, lag, the others) makes that liquid system banded
  with kl = ku = (species + 1): the lead → lag coupling is just "the upstream cell" across the
  column boundary. It is factored with LAPACK's banded LU (dgbtrf/dgbtrs);
- the cumulative outlet states appear in no right-hand side: z_cum = (r_cum + J_cum z)/α.
Roles that break the band (several lead or lag columns) fall back to SuperLU on the full G.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg.lapack import dgbtrf, dgbtrs
from scipy.sparse.linalg import splu

from .adsorption_support import langmuir


class SingularMatrix(RuntimeError):
    pass


class BandLayout:
    """Positions of the condensed liquid matrix in LAPACK band storage (built once per unit)."""

    def __init__(self, n_columns: int, n_cells: int, nc: int):
        self.nc, self.kl = nc, nc
        self.ldab = 3 * nc + 1
        self.n = n = n_columns * n_cells * nc
        base = np.arange(n_columns * n_cells)[:, None, None] * nc
        fr, fc = np.meshgrid(np.arange(nc), np.arange(nc), indexing="ij")
        col = base + fc
        self.block = (col * self.ldab + (2 * nc + fr - fc)).ravel()  # abT flat index, C order
        rows = np.arange(nc, n)
        self.sub = (rows - nc) * self.ldab + 2 * nc + nc  # M[i, i−nc]
        rows = np.arange(0, n - nc)
        self.sup = (rows + nc) * self.ldab + nc  # M[i, i+nc]


class CarouselSystem:
    """A factored G for one (x, u, p, α); ``solve(r)`` returns G⁻¹ r."""

    def __init__(self, unit, x, u, p, alpha: float):
        self.unit, self.alpha = unit, alpha
        r, v, disp, qmax, _, k = unit.routing(u, p)  # k: (cols, 1, ns)
        liq, _, _ = unit.split(x)
        ns, nc, n = unit.ns, unit.nc, unit.n_cells
        _, dq_dc, dq_dh = langmuir(liq[..., :ns], liq[..., ns], qmax, p, derivatives=True)
        self.n_h = p.proton_exponent
        self.a_c = k[..., None] * dq_dc  # (cols, cells, ns, ns)
        self.a_h = k * dq_dh  # (cols, cells, ns)
        self.ratio = p.bulk_density / p.porosity
        self.beta = k / (alpha + k)
        self.inv = 1.0 / (alpha + k)
        self.out = r.out
        self.perm = _flow_order(r.g)
        if self.perm is None:
            self._sparse = splu(sp.identity(len(x), format="csc") * alpha - unit.jacobian(0.0, x, u, p))
            return
        self._sparse = None
        self.identity = bool(np.all(self.perm == np.arange(len(self.perm))))
        dz = p.length / n
        vz, dd = v / dz, disp / (dz * dz)
        faces = np.full(n, 2.0)
        faces[0] = faces[-1] = 1.0
        blocks = np.zeros((unit.n_columns, n, nc, nc))
        w = self.ratio * alpha / (alpha + k)  # (cols, 1, ns)
        blocks[..., :ns, :ns] = w[..., None] * self.a_c
        blocks[..., :ns, ns] = w * self.a_h
        nw = self.n_h * w  # the acid row: protons released by the uptake of every species
        blocks[..., ns, :ns] = -(nw[..., None, :] @ self.a_c)[..., 0, :]
        blocks[..., ns, ns] = -(nw * self.a_h).sum(axis=-1)
        idx = np.arange(nc)
        blocks[..., idx, idx] += (alpha + vz[:, None] + dd[:, None] * faces[None, :])[..., None]
        lay = unit._band
        ab_t = np.zeros((lay.n, lay.ldab))
        flat = ab_t.reshape(-1)
        pm = self.perm
        flat[lay.block] = blocks[pm].ravel()
        sub = np.broadcast_to(-(vz + dd)[:, None, None], (unit.n_columns, n, nc)).copy()
        sub[:, 0, :] = 0.0
        coupling = r.g[pm[1:], pm[:-1]] / (p.porosity * p.area * dz)
        sub = sub[pm]
        sub[1:, 0, :] = -coupling[:, None]
        flat[lay.sub] = sub.reshape(-1)[nc:]
        sup = np.broadcast_to(-dd[:, None, None], (unit.n_columns, n, nc)).copy()
        sup[:, -1, :] = 0.0
        flat[lay.sup] = sup[pm].reshape(-1)[:-nc]
        self.lu, self.piv, info = dgbtrf(ab_t.T, lay.kl, lay.kl)
        if info != 0:
            raise SingularMatrix(f"banded LU failed (info={info})")

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        if self._sparse is not None:
            return self._sparse.solve(rhs)
        unit, ns = self.unit, self.unit.ns
        r_liq, r_q, r_cum = unit.split(rhs)
        b = r_liq.copy()
        b[..., :ns] += self.ratio * self.beta * r_q
        b[..., ns] -= self.ratio * ((self.beta * r_q) @ self.n_h)
        kl = unit._band.kl
        if self.identity:
            z_perm, _ = dgbtrs(self.lu, kl, kl, b.reshape(-1, 1), self.piv, overwrite_b=1)
        else:
            z_perm, _ = dgbtrs(self.lu, kl, kl, b[self.perm].reshape(-1, 1), self.piv, overwrite_b=1)
        z = np.empty_like(rhs)
        z_liq, z_q, z_cum = unit.split(z)
        z_liq[self.perm] = z_perm.reshape(b.shape)
        zc, zh = z_liq[..., :ns], z_liq[..., ns]
        z_q[:] = (r_q + (self.a_c @ zc[..., None])[..., 0] + self.a_h * zh[..., None]) * self.inv
        z_cum[:, :-1] = (r_cum[:, :-1] + self.out @ z_liq[:, -1, :]) / self.alpha
        z_cum[:, -1] = r_cum[:, -1] / self.alpha
        return z


def _flow_order(g: np.ndarray):
    """Column order lead, lag, others, if the series coupling fits in the band; else None."""
    src, dst = np.nonzero(g.T)  # g[dst, src]
    if src.size == 0:
        return np.arange(g.shape[0])
    if src.size > 1:
        return None
    lead, lag = int(src[0]), int(dst[0])
    rest = [k for k in range(g.shape[0]) if k not in (lead, lag)]
    return np.array([lead, lag, *rest])
