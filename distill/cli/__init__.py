"""The `wavedistill` entry point, the base's subcommands (env, data, make-demo-corpus), the environment
report and the allocator settings every command applies. The top of `distill`."""
