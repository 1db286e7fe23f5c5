"""State stores: snapshots, checkpoints and transition history behind one interface."""
