"""The running replica: the runner, one leadership term, the job runner, status and telemetry."""
