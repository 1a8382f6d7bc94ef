"""The jobcontrol server."""
