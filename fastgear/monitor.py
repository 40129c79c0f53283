"""The monitoring listener (issue 6): placeholder until the HTTP server lands."""


def start(cfg, server):
    """Start the listener for cfg.monitor; returns an object with stop(), or None."""
    return None
