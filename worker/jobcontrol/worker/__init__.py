"""The jobcontrol worker."""
