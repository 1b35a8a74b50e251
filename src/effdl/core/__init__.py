"""Core nouns: errors, configs, the technique registry, Task adapters and safe I/O."""
