"""Learning techniques (importing registers them)."""
