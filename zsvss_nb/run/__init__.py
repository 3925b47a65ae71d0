"""Running the method at scale: the CLI, dataset runner, sharding, distribution, threads, bench."""
