"""Mechanics every ClientPress service shares: config, logging, db, bus, http app kit."""
