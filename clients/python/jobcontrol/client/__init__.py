"""The jobcontrol client."""
