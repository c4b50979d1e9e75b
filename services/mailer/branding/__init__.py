"""Branding: the agency's name, logo, accent colour, Reply-To and footer, for every email
and (through the gateway) every page."""
