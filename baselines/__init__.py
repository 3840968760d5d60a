"""Baseline expert policies, one file each. Every module in this package is imported by the registry
(`smoe.policy._discover`), so a new baseline is a new file with `@register_policy("name")`."""
