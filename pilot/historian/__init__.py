"""Historian: where every recorded value goes (embedded SQLite store, InfluxDB 1.x/2.x/3.x)."""
