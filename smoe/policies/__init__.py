"""SMoE policies (the paper's algorithm and its ablation steps). Every module here is imported by the
registry, like `baselines/`."""
