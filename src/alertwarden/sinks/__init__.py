"""Notification outputs: stdout, JSON lines, webhook."""
