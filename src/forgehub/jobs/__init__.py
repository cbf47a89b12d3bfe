"""Jobs: records, the state machine, the dispatcher and the runner."""
