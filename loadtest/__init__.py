"""Load generators and benchmarks. Each prints its command, a table, and writes JSON + PNG."""
