"""The training engine: one run's session, the step loop, fitting phases, features and their cache,
inference, checkpoints, tracking, interrupts and schedules (see docs/architecture.md)."""
