"""The pure evaluation core: bucketed windows, group state and transitions. No I/O here."""
