"""Progressive training: schedule, trainer, checkpoint state, reports, distribution."""
