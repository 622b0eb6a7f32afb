"""Grafana as code: dashboards generated from the plant config, provisioning files."""

from .build import build_dashboards
from .provisioning import write_provisioning

__all__ = ["build_dashboards", "write_provisioning"]
