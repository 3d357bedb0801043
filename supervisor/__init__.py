"""baileys-supervisor: exactly one Baileys worker per tenant, restarted with backoff, controlled over HTTP."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 2
