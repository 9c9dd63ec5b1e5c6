"""The pure core: election state machine, lease arithmetic, slot arithmetic, clock, config, errors, records. No I/O."""
