"""Developer tools, not part of the app: the stand-in mobile client and the benchmarks."""
