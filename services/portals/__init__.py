"""Portals: portals, their status and content, and who may see them (client + sub-clients)."""
