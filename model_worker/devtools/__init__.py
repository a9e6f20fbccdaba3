"""Developer tools, never imported by the serving path unless fault injection is switched on:
the benchmark, random-weight checkpoints, fault injection."""
